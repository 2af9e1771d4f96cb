#!/usr/bin/env bash
# Stampede stress tests: start the reference servers, drive them with loadgen, and
# leave a result (JSON, table, charts, server logs) in results/.
#
# Backends: Docker (docker-compose.stress-test.yml, image built from the host's
# release binaries) when an engine answers, otherwise local smtp-server processes on
# 127.0.0.1. Run `scripts/stress-test.sh help` for the verbs and options.
#
# Load only ever goes to 127.0.0.1 or to this project's containers on its own
# compose network; every run is bounded by a message count or a duration.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RESULTS_DIR="$ROOT/results"
STATE_DIR="${STAMPEDE_STATE_DIR:-$RESULTS_DIR/.stampede}"  # pid file, backend marker (git-ignored)
PID_FILE="$STATE_DIR/servers.pid"
BACKEND_FILE="$STATE_DIR/backend"
RELEASE_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
COMPOSE_FILE="$ROOT/docker-compose.stress-test.yml"
# The compose project: its name also names the image, the network and (for any name
# but the default) the containers, so a second stack (CI's, say) under another name
# never collides with, or tears down, the one a person has running.
COMPOSE_PROJECT="${STAMPEDE_PROJECT:-stampede}"
IMAGE="$COMPOSE_PROJECT:local"
# Containers are smtp-server-N in the default project, <project>-smtp-server-N otherwise.
CONTAINER_PREFIX=""
[[ "$COMPOSE_PROJECT" == stampede ]] || CONTAINER_PREFIX="$COMPOSE_PROJECT-"
DOCKER_CONTEXT="$ROOT/docker/bin"           # git-ignored build context
# The stress settings: the local servers read the TOML file, the containers the env
# file with the same settings (compose's env_file); .ci/stress-test-e2e.sh checks
# that the two agree.
SERVER_CONFIG="$ROOT/docker/stress-test.toml"
# The TLS variant of the same settings (plus a generated certificate), and its env
# twin for the containers; .ci/stress-test-e2e.sh checks them against the pair above.
SERVER_CONFIG_TLS="$ROOT/docker/stress-test-tls.toml"
SERVER_ENV_TLS="docker/stress-test-tls.env"
# Each TLS server writes the CA of its generated certificate to smtp-server-N/ca.pem
# here (containers: a bind mount); loadgen verifies with their bundle, ca-bundle.pem,
# so certificate checking stays on.
TLS_DIR="$STATE_DIR/tls"
IMPLICIT_TLS_CONTAINER_PORT=465             # SMTP_IMPLICIT_TLS_PORT in the TLS env file
# The limits profile (small limits, short windows) that test-limits starts the servers
# with, and its env twin for the containers; see docker/stress-test-limits.toml.
SERVER_CONFIG_LIMITS="$ROOT/docker/stress-test-limits.toml"
SERVER_ENV_LIMITS="docker/stress-test-limits.env"
LIMITS_PROFILE=0                            # 1 while test-limits starts its servers
LIMITS_PIDS=()                              # test-limits' suites running in the background

MAX_DOCKER_SERVERS=5                        # services in the compose file
MAX_LOCAL_SERVERS=20
SMTP_BASE_PORT="${STAMPEDE_SMTP_BASE_PORT:-2525}"
ADMIN_BASE_PORT="${STAMPEDE_ADMIN_BASE_PORT:-8081}"

# Durations (shared grammar, see check_options); these are the defaults in seconds.
HEALTH_TIMEOUT_S=60
DOCKER_TIMEOUT_S=5
COOLDOWN_S=10

# The command line, as parse_args reads it.
VERB=""
LOADGEN_ARGS=()                             # run-custom: everything after the verb
SERVERS=5
SERVERS_SET=0                               # 1 when --servers was given
COOLDOWN_ARG=""                             # --cooldown as given, checked by check_options
BACKEND=""                                  # docker | local; chosen on first use
BACKEND_FORCED=""
CLEAN_RESULTS=0
MESSAGES_ARG=""                             # --messages: overrides a burst test's count
DURATION_ARG=""                             # --duration: overrides test-sustained's 60s
TLS_MODE=none                               # --tls: none | starttls | implicit (loadgen's --tls)
TLS_SET=0                                   # 1 when --tls was given
COOLDOWN_SET=0                              # 1 when --cooldown or STAMPEDE_COOLDOWN was given
SOAK_DURATION_ARG=""                        # --soak-duration: test-soak's length (default 10m)
DEFAULT_SLO='p99<=500ms,success_rate>=99.9' # test-capacity's SLO unless --slo
DEFAULT_SOAK=10m                            # test-soak's length unless --soak-duration
SLO=$DEFAULT_SLO                            # --slo
SOAK_MEMORY=""                              # test-soak's local RSS samples while it runs
TARGET=""                                   # --target HOST:PORT[,...]: test that server, start none
LOADGEN_STATUS=0                            # loadgen's exit status in the last run: 0 or 99
SERVERS_TLS_MODE=none                       # the --tls the servers run with (choose_backend)

# Set while a verb has started servers it must stop again on failure or exit.
OWNED_SERVERS=0

# ---------------------------------------------------------------------------------
# Output helpers

if [[ -t 1 ]]; then
    C_BOLD=$'\e[1m'; C_RED=$'\e[31m'; C_GREEN=$'\e[32m'; C_YELLOW=$'\e[33m'; C_OFF=$'\e[0m'
else
    C_BOLD=""; C_RED=""; C_GREEN=""; C_YELLOW=""; C_OFF=""
fi
info() { printf '%s==>%s %s\n' "$C_BOLD" "$C_OFF" "$*"; }
ok() { printf '%s ok%s %s\n' "$C_GREEN" "$C_OFF" "$*"; }
warn() { printf '%swarning:%s %s\n' "$C_YELLOW" "$C_OFF" "$*" >&2; }
die() { printf '%serror:%s %s\n' "$C_RED" "$C_OFF" "$*" >&2; exit 1; }
# A bad command line: exit 2, before anything has started.
usage_error() {
    printf '%serror:%s %s (see '"'"'scripts/stress-test.sh help'"'"')\n' "$C_RED" "$C_OFF" "$*" >&2
    exit 2
}

# Runs a command with its output held back; shows the output only when it fails.
quietly() {
    local out status=0
    out="$("$@" 2>&1)" || status=$?
    ((status == 0)) || printf '%s\n' "$out" >&2
    return "$status"
}

usage() {
    cat <<'EOF'
Usage: scripts/stress-test.sh [options] <verb> [options]

Verbs:
  build            cargo build --release (server, loadgen, analyze); with Docker also
                   copies the binaries into docker/bin and builds the image stampede:local
  start            start the servers and wait until they are healthy
  stop             stop the servers (no container or process is left behind)
  clean            stop, then remove this project's containers, network, image and
                   docker/bin (results are kept; add --results to delete them too)
  status           servers up/down with live CPU% and memory
  logs             save each server's log to results/server<N>-logs/ and archive them
                   all to results/<stamp>-logs.tar.gz
  test-quick       100 x 1 KiB messages, 10 workers (burst)
  test-burst       5000 x 10 KiB, 50 workers (burst)
  test-sustained   60 s at 50 messages/s, 10 KiB (sustained, open model)
  test-heavy       10000 x 10 KiB, 100 workers (burst)
  test-mixed       2600 messages in one burst run, 50 workers, sizes drawn with
                   the weights 1000 small : 1000 medium : 500 large : 100 xlarge
  test-all         every test above, with a cooldown between them
  test-ramp        the rate climbs from 0 to 2000 messages/s over 60 s, then holds
                   2000/s for 30 s (stages, open model), 10 KiB
  test-spike       200/s for 20 s, a step to 4000/s for 10 s, back to 200/s for
                   30 s (stages, open model), 10 KiB: does it recover, and how fast
  test-soak        a steady 100 messages/s for --soak-duration (default 10m), 10 KiB;
                   memory (Docker: per container; local: each server's RSS, in
                   <result>-memory.csv) and latency over time show any drift
  test-churn       1000 connections/s for 30 s, each one a single 1 KiB message
                   then QUIT (rapid connection creation and destruction)
  test-capacity    capacity search (loadgen --mode capacity --slo "$SLO"): steps of
                   rising rate until the SLO breaks, then bisection to 5%; the
                   highest rate meeting the SLO, or "at least X" when the generator
                   saturated first
  test-shapes      the five tests above (ramp, spike, soak, churn, capacity), with
                   the cooldown between them
  test-limits      start the servers with the limits profile (docker/stress-test-
                   limits.toml / .env) and run `loadgen limits` against each (in
                   parallel, about a minute): connection and rate limits, timeouts,
                   message size, recipients, and the servers' counters; prints a
                   table per server, exits 1 when a case failed. Needs no servers
                   running. Under Docker the suite runs in load-generator containers
                   (one source address each): the per-IP limits are lifted there and
                   the per-IP cases skip, saying so
  run-custom ARGS  run loadgen with ARGS passed through; added when not given:
                   --servers (the running servers), --output
                   results/<stamp>-custom.json, --test-type custom, under
                   Docker --port 2525 and --monitor-containers (the containers),
                   and with --tls (given before run-custom) --tls MODE and
                   --tls-ca (the servers' CAs)
  help             this text

Options (before or after the verb; after run-custom everything goes to loadgen):
  --servers N      number of servers (default 5, or as many as are running;
                   Docker: 1-5, local: 1-20)
  --local          run the servers as local processes on 127.0.0.1
  --docker         run the servers with Docker Compose
  --cooldown D     pause between the tests of test-all and test-shapes (default
                   10s): 30s, 2m, 1h30m, 150ms or plain seconds; when given, also
                   test-capacity's pause between steps (loadgen's --cooldown,
                   default 5s)
  --messages N     the message count of the burst tests (quick, burst, heavy, mixed;
                   mixed keeps its size weights), e.g. for a short trial run
  --duration D     the length of test-sustained (default 60s), same grammar; also
                   shortens the shapes, rates unchanged: test-ramp and test-spike
                   take D in all (each part scaled alike), test-churn and
                   test-soak last D, test-capacity's steps last D each
  --soak-duration D  the length of test-soak (default 10m; wins over --duration)
  --slo GATES      test-capacity's SLO, comma-separated gates in the grammar of
                   analyze check / loadgen --require (default
                   'p99<=500ms,success_rate>=99.9'); latency is judged corrected
  --tls MODE       none (default), starttls or implicit: the servers start with a
                   generated certificate (docker/stress-test-tls.toml / .env), STARTTLS
                   and an implicit-TLS port, and loadgen runs with --tls MODE, checking
                   their certificates with --tls-ca (the CAs the servers wrote);
                   implicit targets the implicit-TLS ports (containers: 465)
  --target HOST:PORT  test your own server instead: no server of ours is started
                   or stopped, loadgen (on this host) sends to HOST:PORT (several:
                   comma separated); --tls MODE checks its certificate against the
                   system's roots; with the tests and run-custom only
  --results        with clean: also delete everything in results/

Every option is checked before anything starts; a bad one exits 2 and names it.

Every test writes results/<stamp>-<test>.json, prints the analyze table, draws
charts into results/<stamp>-<test>-charts/ and saves the server logs. A test that
finds the servers already running (from `start`) uses them and leaves them running;
given --servers N with another count, it first scales them to N (stops the extra
ones or starts the missing ones), and they stay running at N. A test with no servers
running starts them and stops them when it ends.

Environment: STAMPEDE_SMTP_BASE_PORT (2525) and STAMPEDE_ADMIN_BASE_PORT (8081):
the first server's ports on 127.0.0.1, both backends; STAMPEDE_PROJECT (stampede):
the compose project, which also names the image (<project>:local), the network and,
for another name, the containers (<project>-smtp-server-N); STAMPEDE_HEALTH_TIMEOUT
(60s), STAMPEDE_COOLDOWN (10s), STAMPEDE_DOCKER_TIMEOUT (5s to decide whether Docker
answers), STAMPEDE_STATE_DIR (results/.stampede: pid file, backend marker, the TLS
servers' CAs in tls/).
Durations take the same grammar as --cooldown.
EOF
}

stamp() { date +%Y%m%d-%H%M%S; }

# ---------------------------------------------------------------------------------
# Backend selection

COMPOSE=()
find_compose() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        return 1
    fi
}

docker_answers() {
    command -v docker >/dev/null 2>&1 &&
        timeout "$DOCKER_TIMEOUT_S" docker info >/dev/null 2>&1
}

# Picks the backend once: forced by --local/--docker, else what is running now
# (so `stop`, `status` and `logs` follow `start`), else Docker when it answers.
choose_backend() {
    [[ -n "$BACKEND" ]] && return 0
    if [[ "$BACKEND_FORCED" == docker ]]; then
        docker_answers || die "--docker: the Docker engine does not answer ('docker info' failed or took over ${DOCKER_TIMEOUT_S} s); is the daemon running and may you use its socket? Use --local to run without Docker."
        find_compose || die "--docker: neither 'docker compose' nor 'docker-compose' is installed"
        BACKEND=docker
    elif [[ "$BACKEND_FORCED" == local ]]; then
        BACKEND=local
    elif [[ -f "$BACKEND_FILE" ]] && servers_recorded; then
        BACKEND="$(cut -d' ' -f1 "$BACKEND_FILE")"
        [[ "$BACKEND" == docker ]] && { find_compose || die "servers were started with Docker, but compose is gone"; }
    elif docker_answers && find_compose; then
        BACKEND=docker
    else
        BACKEND=local
        if command -v docker >/dev/null 2>&1; then
            info "Docker does not answer (or compose is missing): using local processes"
        fi
    fi
    # Without --servers or --tls, follow the servers that `start` left running; those
    # keep the TLS setting they were started with, also when more are added.
    SERVERS_TLS_MODE=$TLS_MODE
    if [[ "$(cut -d' ' -f1 "$BACKEND_FILE" 2>/dev/null)" == "$BACKEND" ]] && servers_recorded; then
        ((SERVERS_SET == 1)) || SERVERS="$(recorded_count)"
        SERVERS_TLS_MODE="$(recorded_tls)"
        ((TLS_SET == 1)) || TLS_MODE=$SERVERS_TLS_MODE
    fi
    if [[ "$BACKEND" == docker ]] && ((SERVERS > MAX_DOCKER_SERVERS)); then
        usage_error "--servers $SERVERS: the compose file has $MAX_DOCKER_SERVERS server services (use --local for more)"
    fi
    if [[ "$TLS_MODE" == none ]]; then
        info "backend: $BACKEND ($SERVERS server(s))"
    else
        info "backend: $BACKEND ($SERVERS server(s)), TLS: $TLS_MODE"
    fi
}

# True when a `start` left servers recorded in the state directory.
servers_recorded() {
    [[ -f "$BACKEND_FILE" ]] || return 1
    local backend
    backend="$(cut -d' ' -f1 "$BACKEND_FILE")"
    case "$backend" in
        local) [[ -s "$PID_FILE" ]] && any_pid_alive ;;
        docker) docker_answers && find_compose && [[ -n "$(compose ps -q 2>/dev/null)" ]] ;;
        *) return 1 ;;
    esac
}

recorded_count() { cut -d' ' -f2 "$BACKEND_FILE" 2>/dev/null || echo 0; }

# The --tls the running servers were started with (none when the marker predates TLS).
recorded_tls() {
    local mode
    mode="$(cut -d' ' -f3 "$BACKEND_FILE" 2>/dev/null || true)"
    echo "${mode:-none}"
}

# The marker of the running servers: backend, count, TLS mode.
record_servers() { echo "$1 $SERVERS $SERVERS_TLS_MODE" >"$BACKEND_FILE"; }

# Dies when this run asks for TLS and the running servers were started without it
# (servers started with TLS serve every mode: STARTTLS, implicit TLS and plaintext).
check_running_tls() {
    [[ "$TLS_MODE" == none || "$SERVERS_TLS_MODE" != none ]] ||
        die "the running $BACKEND servers were started without TLS and this run asks for --tls $TLS_MODE; run 'scripts/stress-test.sh stop' first (or start them with --tls)"
}

compose() {
    "${COMPOSE[@]}" -p "$COMPOSE_PROJECT" -f "$COMPOSE_FILE" "$@"
}

# ---------------------------------------------------------------------------------
# Building

BINARIES=(smtp-server loadgen analyze)

cargo_build() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (https://rustup.rs)"
    info "cargo build --release -p server -p loadgen -p analyze -p units"
    cargo build --release -p server -p loadgen -p analyze -p units
}

# Builds the release binaries when one of those named (default: all) is missing.
ensure_binaries() {
    local bin
    (($# > 0)) || set -- "${BINARIES[@]}"
    for bin in "$@"; do
        if [[ ! -x "$RELEASE_DIR/$bin" ]]; then
            info "$RELEASE_DIR/$bin is missing; building"
            cargo_build
            return
        fi
    done
}

# Copies the release binaries and the shared libraries they load into
# docker/bin/rootfs (see docker/Dockerfile for why) and builds the image.
build_image() {
    local rootfs="$DOCKER_CONTEXT/rootfs" bin lib
    rm -rf "$rootfs"
    mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/results"
    chmod 1777 "$rootfs/tmp"
    cp "$ROOT/docker/nsswitch.conf" "$rootfs/etc/nsswitch.conf"
    # loadgen checks certificates against the system roots (plus --tls-ca); an image
    # with no distribution has none, so the host's bundle goes in.
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        mkdir -p "$rootfs/etc/ssl/certs"
        cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    fi
    for bin in "${BINARIES[@]}"; do
        cp -p "$RELEASE_DIR/$bin" "$rootfs/$bin"
        # `ldd` prints "=> /path (addr)" or "/path (addr)" per library; static
        # binaries print "not a dynamic executable" / "statically linked".
        while read -r lib; do
            [[ -e "$rootfs$lib" ]] && continue
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L "$lib" "$rootfs$lib"
        done < <(ldd "$RELEASE_DIR/$bin" 2>/dev/null | grep -o '/[^ ]*' || true)
    done
    info "docker build -t $IMAGE (context docker/bin, $(du -sh "$rootfs" | cut -f1))"
    quietly docker build -f "$ROOT/docker/Dockerfile" -t "$IMAGE" \
        --label "com.stampede.project=$COMPOSE_PROJECT" "$DOCKER_CONTEXT" ||
        die "docker build failed (see above); the context is $DOCKER_CONTEXT"
    # The image this build replaced is left untagged; remove it (ours only, by label).
    quietly docker image prune -f --filter "label=com.stampede.project=$COMPOSE_PROJECT" || true
    ok "image $IMAGE"
}

# The image is rebuilt when missing or when a host binary is newer than its copy.
ensure_image() {
    local bin stale=0
    docker image inspect "$IMAGE" >/dev/null 2>&1 || stale=1
    for bin in "${BINARIES[@]}"; do
        [[ "$RELEASE_DIR/$bin" -nt "$DOCKER_CONTEXT/rootfs/$bin" || ! -e "$DOCKER_CONTEXT/rootfs/$bin" ]] && stale=1
    done
    ((stale == 0)) || build_image
}

cmd_build() {
    cargo_build
    if [[ "$BACKEND_FORCED" == local ]]; then
        info "--local: skipping the image (the local backend needs none)"
    elif docker_answers; then
        build_image
    else
        info "no Docker engine answers: skipping the image (the local backend needs none)"
    fi
}

# ---------------------------------------------------------------------------------
# Local backend: smtp-server processes on 127.0.0.1

local_smtp_port() { echo $((SMTP_BASE_PORT + $1 - 1)); }
local_admin_port() { echo $((ADMIN_BASE_PORT + $1 - 1)); }

port_in_use() {
    # Bash's /dev/tcp: connecting succeeds only when something listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True when $1 is alive and is the smtp-server this script started on port $2 (a pid
# file that outlived a reboot must not make us signal an unrelated process).
is_our_server() {
    local cmdline
    kill -0 "$1" 2>/dev/null || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *smtp-server*"--port $2 "* ]]
}

any_pid_alive() { local_alive_above 0; }

# True when $1 runs: alive and not a zombie (a dead child stays one until reaped,
# and kill -0 still succeeds on it).
process_running() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# True when one of our servers numbered above $1 is alive.
local_alive_above() {
    local n pid port
    [[ -f "$PID_FILE" ]] || return 1
    while read -r n pid port _; do
        ((n > $1)) && is_our_server "$pid" "$port" && return 0
    done <"$PID_FILE"
    return 1
}

# Starts the local servers $1 (default 1) to $SERVERS; from 1 it is a fresh start
# (owned by this run until it succeeds), from higher it adds to running servers.
local_start() {
    local first=${1:-1} n port admin pid logdir
    for ((n = first; n <= SERVERS; n++)); do
        port="$(local_smtp_port "$n")"
        admin="$(local_admin_port "$n")"
        for p in "$port" "$admin"; do
            port_in_use "$p" && die "port 127.0.0.1:$p is already in use (a server left running? try 'scripts/stress-test.sh stop', or see 'ss -ltnp | grep :$p'); set STAMPEDE_SMTP_BASE_PORT / STAMPEDE_ADMIN_BASE_PORT to use other ports"
        done
    done
    mkdir -p "$STATE_DIR"
    if ((first == 1)); then
        : >"$PID_FILE"
        OWNED_SERVERS=1
    fi
    record_servers local
    # A fresh start drops the CAs of earlier servers: each start makes new ones.
    ((first > 1)) || rm -rf "$TLS_DIR"
    for ((n = first; n <= SERVERS; n++)); do
        port="$(local_smtp_port "$n")"
        admin="$(local_admin_port "$n")"
        logdir="$RESULTS_DIR/server$n-logs"
        mkdir -p "$logdir"
        local config=$SERVER_CONFIG tls_flags=()
        ((LIMITS_PROFILE == 0)) || config=$SERVER_CONFIG_LIMITS
        if [[ "$SERVERS_TLS_MODE" != none ]]; then
            # The TLS variant: its CA where loadgen's --tls-ca bundle is made from, and
            # implicit TLS on a free port (logged as implicit_tls_addr=).
            config=$SERVER_CONFIG_TLS
            mkdir -p "$TLS_DIR/smtp-server-$n"
            tls_flags=(--tls-ca-out "$TLS_DIR/smtp-server-$n/ca.pem" --implicit-tls-port 0)
        fi
        # The stress settings (see SERVER_CONFIG); the flags set what differs per server.
        "$RELEASE_DIR/smtp-server" --config "$config" --bind 127.0.0.1 --port "$port" \
            --admin-port "$admin" --domain "smtp-server-$n" "${tls_flags[@]}" \
            >"$logdir/smtp-server-$n.log" 2>&1 </dev/null &
        pid=$!
        echo "$n $pid $port $admin" >>"$PID_FILE"
    done
    local_wait_healthy
}

local_wait_healthy() {
    local n pid port admin deadline=$((SECONDS + HEALTH_TIMEOUT_S)) pending
    while :; do
        pending=0
        while read -r n pid port admin; do
            # Just spawned: until its subshell has read the settings and exec'd the
            # server, the process runs but is not smtp-server yet.
            if process_running "$pid" && ! is_our_server "$pid" "$port"; then
                pending=$((pending + 1))
                continue
            fi
            if ! is_our_server "$pid" "$port"; then
                echo "--- last lines of results/server$n-logs/smtp-server-$n.log:" >&2
                tail -n 20 "$RESULTS_DIR/server$n-logs/smtp-server-$n.log" >&2 || true
                die "smtp-server $n (pid $pid, port $port) exited during start-up"
            fi
            "$RELEASE_DIR/smtp-server" healthcheck --admin-port "$admin" >/dev/null 2>&1 || pending=$((pending + 1))
        done <"$PID_FILE"
        ((pending == 0)) && break
        ((SECONDS < deadline)) || die "$pending server(s) not healthy after ${HEALTH_TIMEOUT_S} s (logs: results/server<N>-logs/)"
        sleep 0.2
    done
    ok "$SERVERS local server(s) healthy on 127.0.0.1:$(local_smtp_port 1)-$(local_smtp_port "$SERVERS")"
}

# Stops the local servers numbered above $1 (default 0: all of them) and drops them
# from the pid file.
local_stop() {
    local keep=${1:-0} n pid port admin left
    [[ -f "$PID_FILE" ]] || return 0
    # SIGTERM lets each server drain its sessions (up to its grace period).
    while read -r n pid port admin; do
        if ((n > keep)) && is_our_server "$pid" "$port"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done <"$PID_FILE"
    for _ in $(seq 1 100); do
        local_alive_above "$keep" || break
        sleep 0.2
    done
    left=0
    while read -r n pid port admin; do
        if ((n > keep)) && is_our_server "$pid" "$port"; then
            warn "server $n (pid $pid) ignored SIGTERM for 20 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            left=1
        fi
    done <"$PID_FILE"
    ((left == 0)) || sleep 0.5
    if ((keep == 0)); then
        rm -f "$PID_FILE"
        ok "local servers stopped"
    else
        awk -v keep="$keep" '$1 <= keep' "$PID_FILE" >"$PID_FILE.new"
        mv "$PID_FILE.new" "$PID_FILE"
        ok "local servers above $keep stopped"
    fi
}

# Scales running local servers from $1 to $SERVERS.
local_scale() {
    local running=$1
    if ((SERVERS < running)); then
        local_stop "$SERVERS"
        record_servers local
    else
        local_start $((running + 1))
    fi
}

local_servers_list() {
    local n out=()
    for ((n = 1; n <= SERVERS; n++)); do
        if [[ "$TLS_MODE" == implicit ]]; then
            out+=("$(local_implicit_addr "$n")")
        else
            out+=("127.0.0.1:$(local_smtp_port "$n")")
        fi
    done
    (IFS=,; echo "${out[*]}")
}

# The implicit-TLS address of local server $1, from its start-up line (it was
# started with --implicit-tls-port 0: a free port).
local_implicit_addr() {
    local log="$RESULTS_DIR/server$1-logs/smtp-server-$1.log" addr
    addr="$(grep -o 'implicit_tls_addr=[0-9.:]*' "$log" 2>/dev/null | head -n 1 | cut -d= -f2)"
    [[ -n "$addr" ]] || die "server $1 logged no implicit_tls_addr= (was it started with --tls? see $log)"
    echo "$addr"
}

local_status() {
    local n pid port admin state
    if [[ ! -s "$PID_FILE" ]]; then
        echo "no local servers running"
        return 0
    fi
    printf '%-8s %-8s %-16s %-6s %-8s %-10s %s\n' SERVER PID ADDRESS ADMIN HEALTH "CPU%" "RSS"
    while read -r n pid port admin; do
        if is_our_server "$pid" "$port"; then
            if "$RELEASE_DIR/smtp-server" healthcheck --admin-port "$admin" >/dev/null 2>&1; then
                state=up
            else
                state=unhealthy
            fi
            # ps: CPU% over the process lifetime is misleading; top -b gives the
            # current figure but is not everywhere, so sample /proc over 0.5 s.
            printf '%-8s %-8s %-16s %-6s %-8s %-10s %s\n' "server$n" "$pid" "127.0.0.1:$port" "$admin" "$state" \
                "$(cpu_percent_of "$pid")" "$(($(ps -o rss= -p "$pid" 2>/dev/null || echo 0) / 1024)) MiB"
        else
            printf '%-8s %-8s %-16s %-6s %-8s\n' "server$n" "$pid" "127.0.0.1:$port" "$admin" down
        fi
    done <"$PID_FILE"
}

# CPU% of one process over half a second, from /proc/<pid>/stat (utime + stime).
cpu_percent_of() {
    local pid=$1 t1 t2 hz
    hz="$(getconf CLK_TCK)"
    t1="$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null)" || { echo "-"; return; }
    sleep 0.5
    t2="$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null)" || { echo "-"; return; }
    awk -v a="$t1" -v b="$t2" -v hz="$hz" 'BEGIN { printf "%.1f%%", (b - a) / hz / 0.5 * 100 }'
}

# ---------------------------------------------------------------------------------
# Docker backend

docker_services() {
    local n
    for ((n = 1; n <= SERVERS; n++)); do echo "smtp-server-$n"; done
}

docker_servers_list() { docker_services | paste -sd, -; }

# The container of service N (see CONTAINER_PREFIX).
container_of() { echo "${CONTAINER_PREFIX}smtp-server-$1"; }

docker_containers_list() {
    local n out=()
    for ((n = 1; n <= SERVERS; n++)); do out+=("$(container_of "$n")"); done
    (IFS=,; echo "${out[*]}")
}

# What the compose file reads from the environment: the image, the container names
# and the published ports of this project.
export_compose_env() {
    local n
    export STAMPEDE_IMAGE="$IMAGE" STAMPEDE_CONTAINER_PREFIX="$CONTAINER_PREFIX"
    # The servers' settings file: the TLS variant is chosen in docker_start.
    export STAMPEDE_SERVER_ENV=docker/stress-test.env STAMPEDE_TLS_DIR="$TLS_DIR"
    for ((n = 1; n <= MAX_DOCKER_SERVERS; n++)); do
        export "STAMPEDE_SMTP_PORT_$n=$(local_smtp_port "$n")" "STAMPEDE_ADMIN_PORT_$n=$(local_admin_port "$n")"
    done
}

# Brings up the services 1..N and removes those above N. $1: "scale" when the
# servers were already running (they are not this run's to stop on failure).
docker_start() {
    local mode=${1:-fresh} n port name
    ensure_binaries
    ensure_image
    for ((n = 1; n <= SERVERS; n++)); do
        name="$(container_of "$n")"
        if docker inspect "$name" >/dev/null 2>&1 &&
            [[ "$(docker inspect -f '{{index .Config.Labels "com.docker.compose.project"}}' "$name")" != "$COMPOSE_PROJECT" ]]; then
            die "a container named $name exists and is not part of the compose project $COMPOSE_PROJECT; remove or rename it, or set STAMPEDE_PROJECT"
        fi
        if ! docker ps -q --filter "name=^$name\$" | grep -q .; then
            for port in "$(local_smtp_port "$n")" "$(local_admin_port "$n")"; do
                port_in_use "$port" &&
                    die "port 127.0.0.1:$port is in use (local servers or another stack running? try 'scripts/stress-test.sh stop'); set STAMPEDE_SMTP_BASE_PORT / STAMPEDE_ADMIN_BASE_PORT to use other ports"
            done
        fi
    done
    mkdir -p "$STATE_DIR" "$RESULTS_DIR"
    record_servers docker
    [[ "$mode" == scale ]] || OWNED_SERVERS=1
    # Each container mounts its directory under TLS_DIR (its CA goes there); made
    # here, by the user, so that Docker does not create them owned by root. A fresh
    # start drops the CAs of earlier containers.
    [[ "$mode" == scale ]] || rm -rf "$TLS_DIR"
    for ((n = 1; n <= MAX_DOCKER_SERVERS; n++)); do mkdir -p "$TLS_DIR/smtp-server-$n"; done
    if [[ "$SERVERS_TLS_MODE" != none ]]; then
        export STAMPEDE_SERVER_ENV="$SERVER_ENV_TLS"
    fi
    if ((LIMITS_PROFILE != 0)); then
        STAMPEDE_SERVER_ENV="$(limits_docker_env)"
        export STAMPEDE_SERVER_ENV
    fi
    # Services beyond N (from an earlier, larger start) are stopped so the count holds.
    local extra=()
    for ((n = SERVERS + 1; n <= MAX_DOCKER_SERVERS; n++)); do extra+=("smtp-server-$n"); done
    if ((${#extra[@]} > 0)); then
        compose rm -sf "${extra[@]}" >/dev/null 2>&1 || true
    fi
    info "starting $(docker_services | paste -sd' ' -)"
    # shellcheck disable=SC2046
    quietly compose up -d --no-build $(docker_services) ||
        die "docker-compose up failed (see above)"
    docker_wait_healthy
}

docker_wait_healthy() {
    local deadline=$((SECONDS + HEALTH_TIMEOUT_S)) name state pending
    while :; do
        pending=0
        for name in $(docker_containers_list | tr , ' '); do
            state="$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$name" 2>/dev/null || echo missing)"
            case "$state" in
                "running healthy") ;;
                running*) pending=$((pending + 1)) ;;
                *)
                    docker logs --tail 20 "$name" >&2 2>&1 || true
                    die "container $name is not running ($state); its last log lines are above"
                    ;;
            esac
        done
        ((pending == 0)) && break
        if ((SECONDS >= deadline)); then
            for name in $(docker_containers_list | tr , ' '); do
                echo "--- last lines of the log of $name:" >&2
                docker logs --tail 20 "$name" >&2 2>&1 || true
            done
            if ((OWNED_SERVERS == 1)); then
                # on_exit saves the logs before it removes the containers.
                die "$pending container(s) not healthy after ${HEALTH_TIMEOUT_S} s (STAMPEDE_HEALTH_TIMEOUT); their last log lines are above"
            fi
            die "$pending container(s) not healthy after ${HEALTH_TIMEOUT_S} s (STAMPEDE_HEALTH_TIMEOUT); their last log lines are above, 'scripts/stress-test.sh logs' saves them all"
        fi
        sleep 0.5
    done
    ok "$SERVERS container(s) healthy (published on 127.0.0.1:$(local_smtp_port 1)-$(local_smtp_port "$SERVERS"))"
}

docker_stop() {
    # `down` removes the project's containers (all services, whatever N was) and its
    # network; --remove-orphans catches load-generator runs that were interrupted.
    quietly compose --profile load-generator down --remove-orphans --timeout 15 ||
        quietly compose down --remove-orphans --timeout 15 ||
        die "docker-compose down failed (see above)"
    ok "containers and network removed"
}

docker_status() {
    local names
    compose ps 2>/dev/null || true
    names="$(compose ps -q 2>/dev/null | xargs -r docker inspect -f '{{.Name}}' | sed 's#^/##' | sort)"
    if [[ -z "$names" ]]; then
        echo "no containers running"
        return 0
    fi
    echo
    # shellcheck disable=SC2086
    docker stats --no-stream --format 'table {{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.PIDs}}' $names
}

# ---------------------------------------------------------------------------------
# Verbs

cmd_start() {
    choose_backend
    if servers_recorded; then
        # `start --servers N` with other servers running scales them to N.
        if ((SERVERS_SET == 1)) && running_count_differs; then
            check_running_tls
            scale_servers
            return 0
        fi
        die "servers are already running ($(cat "$BACKEND_FILE")); run 'scripts/stress-test.sh stop' first"
    fi
    trap on_exit EXIT
    case "$BACKEND" in
        local) ensure_binaries smtp-server; local_start ;;
        docker) docker_start ;;
    esac
    OWNED_SERVERS=0   # `start` leaves them running on success
}

# Stops everything this project may have running, in both backends (or only the
# one named by --local/--docker): a stop must never leave a process or a container
# behind.
cmd_stop() {
    local stopped=0
    if [[ "$BACKEND_FORCED" != docker && -s "$PID_FILE" ]]; then
        local_stop
        stopped=1
    fi
    if [[ "$BACKEND_FORCED" != local ]] && docker_answers && find_compose; then
        if [[ -n "$(compose --profile load-generator ps -q 2>/dev/null || compose ps -q 2>/dev/null)" ]] ||
            docker network inspect "${COMPOSE_PROJECT}_stampede" >/dev/null 2>&1; then
            docker_stop
            stopped=1
        fi
    fi
    rm -f "$BACKEND_FILE"
    ((stopped == 1)) || echo "nothing was running"
}

cmd_clean() {
    cmd_stop
    if command -v docker >/dev/null 2>&1 && docker_answers; then
        if docker image inspect "$IMAGE" >/dev/null 2>&1; then
            docker image rm "$IMAGE" >/dev/null && ok "image $IMAGE removed"
        fi
        quietly docker image prune -f --filter "label=com.stampede.project=$COMPOSE_PROJECT" || true
    fi
    rm -rf "$DOCKER_CONTEXT" "$STATE_DIR"
    ok "docker/bin and the state directory removed"
    if ((CLEAN_RESULTS == 1)); then
        find "$RESULTS_DIR" -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +
        ok "results/ emptied"
    fi
}

cmd_status() {
    choose_backend
    case "$BACKEND" in
        local) local_status ;;
        docker) docker_status ;;
    esac
    if servers_recorded && [[ "$(recorded_tls)" != none ]]; then
        echo "TLS: started with --tls $(recorded_tls) (STARTTLS and implicit TLS; the servers' CAs in ${TLS_DIR#"$ROOT"/}/)"
    fi
}

# Saves each server's log to results/server<N>-logs/ and archives them.
# $1: the archive's name stem (default: a time stamp).
cmd_logs() {
    local name="${1:-$(stamp)}" n files=() archive
    choose_backend
    mkdir -p "$RESULTS_DIR"
    case "$BACKEND" in
        docker)
            for ((n = 1; n <= MAX_DOCKER_SERVERS; n++)); do
                docker inspect "$(container_of "$n")" >/dev/null 2>&1 || continue
                mkdir -p "$RESULTS_DIR/server$n-logs"
                docker logs "$(container_of "$n")" >"$RESULTS_DIR/server$n-logs/smtp-server-$n.log" 2>&1
                files+=("server$n-logs/smtp-server-$n.log")
            done
            ;;
        local)
            # Local servers write their logs there themselves; only the running
            # ones' are this session's (the others are left from an earlier run).
            local pid port
            while read -r n pid port _; do
                is_our_server "$pid" "$port" || continue
                [[ -f "$RESULTS_DIR/server$n-logs/smtp-server-$n.log" ]] || continue
                files+=("server$n-logs/smtp-server-$n.log")
            done < <(cat "$PID_FILE" 2>/dev/null)
            ;;
    esac
    if ((${#files[@]} == 0)); then
        warn "no $BACKEND server is running, so there are no logs to save (the files in results/server<N>-logs/ are from an earlier run; each test archives its own logs)"
        return 0
    fi
    archive="$RESULTS_DIR/$name-logs.tar.gz"
    tar -czf "$archive" -C "$RESULTS_DIR" "${files[@]}"
    ok "logs of ${#files[@]} running server(s): results/server<N>-logs/, archive ${archive#"$ROOT"/}"
}

# Runs loadgen against the current servers. $1: test name; the rest: loadgen flags.
# Adds --servers, --port, --output and (Docker) --monitor-containers unless given.
run_loadgen() {
    local test_name=$1 run_stamp
    shift
    local args=("$@") have_servers=0 have_output=0 have_monitor=0 have_type=0 have_tls=0 a output status=0
    for a in "${args[@]}"; do
        case "$a" in
            --servers | --servers=*) have_servers=1 ;;
            --tls | --tls=*) have_tls=1 ;;
            --output | --output=* | -o) have_output=1 ;;
            --monitor-containers | --monitor-containers=*) have_monitor=1 ;;
            --test-type | --test-type=*) have_type=1 ;;
        esac
    done
    run_stamp="$(stamp)"
    # Two runs in one second would share a name: wait for the next second instead.
    while [[ -e "results/$run_stamp-$test_name.json" ]]; do
        sleep 0.2
        run_stamp="$(stamp)"
    done
    output="results/$run_stamp-$test_name.json"
    if ((have_output == 1)); then
        output=""
        local i
        for ((i = 0; i < ${#args[@]}; i++)); do
            case "${args[$i]}" in
                --output | -o) output="${args[$((i + 1))]:-}" ;;
                --output=*) output="${args[$i]#--output=}" ;;
            esac
        done
    else
        args+=(--output "$output")
    fi
    ((have_type == 1)) || args+=(--test-type "$test_name")
    local tls_ca="$TLS_DIR/ca-bundle.pem"
    [[ "$BACKEND" == local ]] || tls_ca=/tls/ca-bundle.pem   # the generator's mount
    if [[ -n "$TARGET" ]]; then
        # The target's certificate is checked against the system's roots (add
        # --tls-ca through run-custom for a private CA).
        ((have_tls == 1)) || [[ "$TLS_MODE" == none ]] || args+=(--tls "$TLS_MODE")
        ((have_servers == 1)) || args+=(--servers "$TARGET")
        have_servers=1
    elif ((have_tls == 0)) && [[ "$TLS_MODE" != none ]]; then
        tls_ca_bundle
        args+=(--tls "$TLS_MODE" --tls-ca "$tls_ca")
    fi

    mkdir -p "$RESULTS_DIR"
    case "$BACKEND" in
        local)
            ((have_servers == 1)) || args+=(--servers "$(local_servers_list)")
            info "loadgen ${args[*]}"
            "$RELEASE_DIR/loadgen" "${args[@]}" || status=$?
            ;;
        docker)
            local port=2525
            [[ "$TLS_MODE" != implicit ]] || port=$IMPLICIT_TLS_CONTAINER_PORT
            ((have_servers == 1)) || args+=(--servers "$(docker_servers_list)" --port "$port")
            ((have_monitor == 1)) || args+=(--monitor-containers "$(docker_containers_list)")
            local run_opts=(--rm)
            [[ -t 0 && -t 1 ]] || run_opts+=(-T)
            info "docker-compose run load-generator ${args[*]}"
            # The generator in its container would record the container's id as the
            # host and no git revision: pass the host's.
            STAMPEDE_GIT_SHA="${STAMPEDE_GIT_SHA:-$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || true)}" \
                STAMPEDE_HOST_NAME="$(uname -n)" STAMPEDE_HOST_CPUS="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 0)" \
                STAMPEDE_UID="$(id -u)" STAMPEDE_GID="$(id -g)" \
                STAMPEDE_DOCKER_GID="$(stat -c %g /var/run/docker.sock 2>/dev/null || echo 0)" \
                compose run "${run_opts[@]}" load-generator "${args[@]}" || status=$?
            ;;
    esac
    # 99: the run was carried out and written, and a gate (--require) was missed:
    # present_result shows it, then the script exits 99. Anything else stops here.
    ((status == 0 || status == 99)) || exit "$status"
    LOADGEN_STATUS=$status
    LAST_RESULT="$output"
    LAST_STAMP="$run_stamp"
}

# Writes TLS_DIR/ca-bundle.pem, loadgen's --tls-ca: the CAs that servers 1..N wrote
# when they started (a throwaway CA each), so loadgen checks every server's
# certificate against its own CA.
tls_ca_bundle() {
    local n ca bundle="$TLS_DIR/ca-bundle.pem"
    : >"$bundle.new"
    for ((n = 1; n <= SERVERS; n++)); do
        ca="$TLS_DIR/smtp-server-$n/ca.pem"
        [[ -s "$ca" ]] || die "server $n wrote no CA to $ca: was it started with --tls? ('scripts/stress-test.sh stop', then run again; its log: results/server$n-logs/)"
        cat "$ca" >>"$bundle.new"
    done
    mv "$bundle.new" "$bundle"
}

# Table, charts and logs for the result of the last run.
present_result() {
    local test_name=$1 file="$LAST_RESULT" charts
    [[ -n "$file" && -f "$file" ]] || die "loadgen wrote no result file ($file)"
    echo
    "$RELEASE_DIR/analyze" show "$file"
    charts="${file%.json}-charts"
    if "$RELEASE_DIR/analyze" chart "$file" --out "$charts" >/dev/null; then
        ok "charts in $charts/"
    else
        warn "analyze chart failed; the result itself is fine"
    fi
    if [[ -n "$TARGET" ]]; then
        ok "result ${file} (the target's logs are its own)"
    else
        cmd_logs "$LAST_STAMP-$test_name" >/dev/null
        ok "result ${file}; server logs in results/server<N>-logs/ and results/$LAST_STAMP-$test_name-logs.tar.gz"
    fi
    if ((LOADGEN_STATUS == 99)); then
        warn "a gate was missed (loadgen exit 99; the gates are in the table above)"
        exit 99
    fi
}

# True when the servers that `start` left running are not as many as --servers asks
# for; dies when they are of the other backend.
running_count_differs() {
    local running_backend
    running_backend="$(cut -d' ' -f1 "$BACKEND_FILE")"
    [[ "$running_backend" == "$BACKEND" ]] ||
        die "$(recorded_count) $running_backend server(s) are running and this run asks for $BACKEND ones; run 'scripts/stress-test.sh stop' first"
    [[ "$(recorded_count)" != "$SERVERS" ]]
}

# Scales the running servers to --servers N: the extra ones stop, the missing ones
# start. They were the user's before this run and stay running afterwards, at N.
scale_servers() {
    local running
    running="$(recorded_count)"
    info "scaling the running $BACKEND servers from $running to $SERVERS (--servers $SERVERS); they stay running"
    case "$BACKEND" in
        local) local_scale "$running" ;;
        docker) docker_start scale ;;
    esac
}

# Makes sure servers of the chosen backend and count are up; starts them (and
# arranges to stop them at exit) when none are running, scales running ones.
ensure_servers() {
    if [[ -n "$TARGET" ]]; then
        # --target: somebody else's server; nothing of ours starts or stops.
        BACKEND=local
        ensure_binaries loadgen analyze
        info "target: $TARGET (no server of ours is started; loadgen runs on this host)"
        return 0
    fi
    choose_backend
    ensure_binaries
    if servers_recorded; then
        check_running_tls
        if running_count_differs; then
            scale_servers
            return 0
        fi
        info "using the running $BACKEND servers"
        [[ "$BACKEND" == local ]] && local_wait_healthy
        [[ "$BACKEND" == docker ]] && docker_wait_healthy
        return 0
    fi
    trap on_exit EXIT
    case "$BACKEND" in
        local) local_start ;;
        docker) docker_start ;;
    esac
}

on_exit() {
    local status=$?
    # test-limits' suites, when the script ends before they do (Ctrl-C, an error).
    ((${#LIMITS_PIDS[@]} == 0)) || kill "${LIMITS_PIDS[@]}" 2>/dev/null || true
    if ((OWNED_SERVERS == 1)); then
        ((status == 0)) || warn "stopping the servers this run started"
        # Keep the logs of a failed run before the containers go, and say where.
        if ((status != 0)) && [[ "$BACKEND" == docker ]]; then
            local saved
            saved="$(stamp)-failed"
            cmd_logs "$saved" >/dev/null 2>&1 || true
            [[ ! -f "$RESULTS_DIR/$saved-logs.tar.gz" ]] ||
                echo "the servers' logs are saved in results/$saved-logs.tar.gz (and results/server<N>-logs/)" >&2
        fi
        OWNED_SERVERS=0
        cmd_stop >/dev/null 2>&1 || true
        ((status == 0)) || echo "servers stopped" >&2
    fi
    exit "$status"
}
trap 'exit 130' INT
trap 'exit 143' TERM

# The named tests: loadgen flags per test. --messages and --duration replace the
# count and the length, and nothing else, so a shortened test runs the same path.
test_flags() {
    local sustained="${DURATION_ARG:-60s}"
    case "$1" in
        quick) echo "--mode burst --messages ${MESSAGES_ARG:-100} --workers 10 --size small" ;;
        burst) echo "--mode burst --messages ${MESSAGES_ARG:-5000} --workers 50 --size medium" ;;
        sustained) echo "--mode sustained --duration $sustained --rate 50 --size medium" ;;
        heavy) echo "--mode burst --messages ${MESSAGES_ARG:-10000} --workers 100 --size medium" ;;
        # One run with PrixFixe's four batches mixed together (2600 messages, each
        # size drawn with the batch sizes as weights): the servers see the sizes
        # interleaved, as real traffic comes, and one result carries the whole test.
        mixed) echo "--mode burst --messages ${MESSAGES_ARG:-2600} --workers 50 --size small=1000,medium=1000,large=500,xlarge=100" ;;
        *) return 1 ;;
    esac
}

run_named_test() {
    local name=$1 flags
    flags="$(test_flags "$name")"
    info "test-$name: $flags"
    # shellcheck disable=SC2086
    run_loadgen "$name" $flags
    present_result "$name"
}

cmd_test() {
    ensure_servers
    run_named_test "$1"
}

cmd_test_all() {
    local names=(quick burst sustained heavy mixed) i results=()
    ensure_servers
    for ((i = 0; i < ${#names[@]}; i++)); do
        if ((i > 0)); then
            info "cooldown ${COOLDOWN_S} s"
            sleep "$COOLDOWN_S"
        fi
        run_named_test "${names[$i]}"
        results+=("$LAST_RESULT")
    done
    ok "test-all: ${#names[@]} tests done"
    summarize "${results[@]}"
}

# One table of the given results (analyze summary over a directory holding only
# links to them).
summarize() {
    local dir file
    dir="$(mktemp -d "${TMPDIR:-/tmp}/stampede-summary.XXXXXX")"
    for file in "$@"; do
        [[ "$file" == /* ]] || file="$ROOT/$file"
        ln -s "$file" "$dir/"
    done
    echo
    "$RELEASE_DIR/analyze" summary --dir "$dir" || warn "analyze summary failed; the results themselves are fine"
    rm -rf "$dir"
}

cmd_run_custom() {
    ensure_servers
    run_loadgen custom "$@"
    present_result custom
}

# ---------------------------------------------------------------------------------
# test-limits: `loadgen limits` against each server, started with the limits profile.

# The containers' settings: the limits profile with the per-IP limits lifted. A
# load-generator container connects from one address, so a per-IP limit would trip
# the global cases; the per-IP cases skip (they need a second address) and say so.
limits_docker_env() {
    local env="$STATE_DIR/stress-test-limits-docker.env"
    mkdir -p "$STATE_DIR"
    {
        grep -v -e '^SMTP_MAX_CONNECTIONS_PER_IP=' -e '^SMTP_MAX_REQUESTS_PER_WINDOW_PER_IP=' "$ROOT/$SERVER_ENV_LIMITS"
        echo "# test-limits under Docker: one source address per generator container"
        echo "SMTP_MAX_CONNECTIONS_PER_IP=100000"
        echo "SMTP_MAX_REQUESTS_PER_WINDOW_PER_IP=100000"
    } >"$env"
    echo "$env"
}

# Starts `loadgen limits` against server $1 in the background, its document in $2
# and its output in $3; its PID in LIMITS_PID (not printed: a command substitution
# would make it the child of a subshell, which `wait` cannot wait for).
limits_suite_start() {
    local n=$1 doc=$2 log=$3
    case "$BACKEND" in
        local)
            "$RELEASE_DIR/loadgen" limits --server "127.0.0.1:$(local_smtp_port "$n")" \
                --admin "http://127.0.0.1:$(local_admin_port "$n")" -q -o "$doc" >"$log" 2>&1 </dev/null &
            ;;
        docker)
            STAMPEDE_UID="$(id -u)" STAMPEDE_GID="$(id -g)" \
                STAMPEDE_DOCKER_GID="$(stat -c %g /var/run/docker.sock 2>/dev/null || echo 0)" \
                compose run --rm -T load-generator limits --server "smtp-server-$n:2525" \
                --admin "http://smtp-server-$n:8080" -q -o "/$doc" >"$log" 2>&1 </dev/null &
            ;;
    esac
    LIMITS_PID=$!
}

cmd_test_limits() {
    choose_backend
    [[ "$TLS_MODE" == none ]] || usage_error "--tls $TLS_MODE: test-limits checks the plaintext SMTP port"
    if servers_recorded; then
        die "servers are running ($(cat "$BACKEND_FILE")), with the stress settings; test-limits starts its own with the limits profile: run 'scripts/stress-test.sh stop' first"
    fi
    ensure_binaries
    LIMITS_PROFILE=1
    trap on_exit EXIT
    case "$BACKEND" in
        local) local_start ;;
        docker) docker_start ;;
    esac
    local run_stamp n docs=() logs=() status failed=0
    run_stamp="$(stamp)"
    mkdir -p "$RESULTS_DIR"
    info "loadgen limits against $SERVERS server(s), in parallel (about a minute)"
    for ((n = 1; n <= SERVERS; n++)); do
        docs+=("results/$run_stamp-limits-server$n.json")
        logs+=("$STATE_DIR/limits-server$n.log")
        limits_suite_start "$n" "${docs[$((n - 1))]}" "${logs[$((n - 1))]}"
        LIMITS_PIDS+=("$LIMITS_PID")
    done
    for ((n = 1; n <= SERVERS; n++)); do
        status=0
        wait "${LIMITS_PIDS[$((n - 1))]}" || status=$?
        echo
        info "server $n: loadgen limits exited $status"
        if [[ -f "${docs[$((n - 1))]}" ]]; then
            "$RELEASE_DIR/analyze" show "${docs[$((n - 1))]}" || warn "analyze show failed; the document is ${docs[$((n - 1))]}"
        else
            cat "${logs[$((n - 1))]}" >&2
        fi
        ((status == 0)) || failed=$((failed + 1))
    done
    LIMITS_PIDS=()
    echo
    if ((failed > 0)); then
        die "test-limits: the suite failed against $failed of $SERVERS server(s) (documents: results/$run_stamp-limits-server<N>.json)"
    fi
    ok "test-limits: every case that ran passed against all $SERVERS server(s) (documents: results/$run_stamp-limits-server<N>.json)"
}

# ---------------------------------------------------------------------------------
# Load shapes (issue 11): ramp, spike, soak, churn and the capacity search. Time
# shapes, not message counts: --duration shortens them (rates unchanged), so a
# shortened shape still runs every part of its curve.

SHAPES=(ramp spike soak churn capacity)

# Prints $1 seconds scaled by $2 as a duration loadgen reads, in whole milliseconds
# (a shortened shape keeps sub-second parts: 60 s x 0.05 = 3000ms).
scaled_ms() { awk -v s="$1" -v f="$2" 'BEGIN { printf "%dms", s * f * 1000 + 0.5 }'; }

# The factor that fits a shape of $1 seconds into --duration (1 without it).
shape_scale() {
    [[ -n "$DURATION_ARG" ]] || { echo 1; return; }
    awk -v d="$(duration_seconds --duration "$DURATION_ARG")" -v n="$1" 'BEGIN { print d / n }'
}

# loadgen flags of a shape. Ramp and spike are stages curves (open model, fixed
# timetable, corrected latency); --workers is raised above the default 50 so that
# the generator, not the cap on sessions in flight, is what a spike meets last.
shape_flags() {
    local f
    case "$1" in
        ramp)
            # 0 -> 2000/s over 60 s, then 2000/s held for 30 s.
            f="$(shape_scale 90)"
            echo "--mode stages --stages $(scaled_ms 60 "$f"):2000,$(scaled_ms 30 "$f"):2000 --workers 400 --size medium"
            ;;
        spike)
            # 200/s, a step to 4000/s held 10 s, a step back to 200/s for 30 s; the
            # 20 s before the step are the baseline the recovery is judged against.
            f="$(shape_scale 60)"
            echo "--mode stages --start-rate 200 --stages $(scaled_ms 20 "$f"):200,0s:4000,$(scaled_ms 10 "$f"):4000,0s:200,$(scaled_ms 30 "$f"):200 --workers 400 --size medium"
            ;;
        soak)
            echo "--mode sustained --rate 100 --duration ${SOAK_DURATION_ARG:-${DURATION_ARG:-$DEFAULT_SOAK}} --size medium"
            ;;
        churn)
            # One message per connection, small, at a high rate: the cost measured is
            # the connection's (accept, banner, EHLO, QUIT, close), not the data's.
            echo "--mode sustained --rate 1000 --duration ${DURATION_ARG:-30s} --msgs-per-conn 1 --size small --workers 200"
            ;;
        capacity)
            local timing=""
            [[ -z "$DURATION_ARG" ]] || timing+=" --step-duration $DURATION_ARG"
            ((COOLDOWN_SET == 0)) || timing+=" --cooldown ${COOLDOWN_S}s"
            # 400 sessions, as for ramp and spike: a step should meet the server's
            # limit, not the cap on sessions in flight (a step that does is marked
            # generator-saturated and the answer becomes "at least").
            echo "--mode capacity --slo $SLO$timing --workers 400 --size medium"
            ;;
        *) return 1 ;;
    esac
}

run_shape() {
    local name=$1 flags sampler=""
    flags="$(shape_flags "$name")"
    info "test-$name: $flags"
    # Local servers have no container to sample: the soak records their RSS itself.
    if [[ "$name" == soak && "$BACKEND" == local ]]; then
        SOAK_MEMORY="$(mktemp "${TMPDIR:-/tmp}/stampede-soak-memory.XXXXXX")"
        sample_local_memory "$SOAK_MEMORY" &
        sampler=$!
    fi
    # The SLO holds no spaces or globs (check_shape_options): word splitting is
    # intended.
    # shellcheck disable=SC2086
    run_loadgen "$name" $flags
    if [[ -n "$sampler" ]]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
    fi
    present_result "$name"
    [[ -z "$sampler" ]] || report_local_memory "$SOAK_MEMORY"
}

# Every 5 s, one line per local server: seconds since the start, server, RSS in KiB.
# Runs in the background until run_shape kills it, or until the script ($$ in this
# subshell too) or the servers' pid file is gone.
sample_local_memory() {
    local samples=$1 start=$SECONDS n pid port rss
    echo "t_s,server,rss_kib" >"$samples"
    while kill -0 "$$" 2>/dev/null && [[ -f "$PID_FILE" ]]; do
        while read -r n pid port _; do
            is_our_server "$pid" "$port" || continue
            rss="$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)" || continue
            [[ -n "$rss" ]] && echo "$((SECONDS - start)),smtp-server-$n,$rss" >>"$samples"
        done <"$PID_FILE"
        sleep 5
    done
}

# Keeps the samples beside the result and prints each server's first and last RSS.
report_local_memory() {
    local samples=$1 csv="${LAST_RESULT%.json}-memory.csv"
    mv "$samples" "$csv"
    echo
    awk -F, 'NR > 1 { if (!($2 in first)) { first[$2] = $3; order[++n] = $2 } last[$2] = $3; t[$2] = $1 }
        END { for (i = 1; i <= n; i++) { s = order[i]
            printf "  %s: RSS %.1f MiB at the start, %.1f MiB after %d s (%+.1f MiB)\n",
                s, first[s] / 1024, last[s] / 1024, t[s], (last[s] - first[s]) / 1024 } }' "$csv"
    ok "memory samples (every 5 s) in $csv; latency over time in ${LAST_RESULT%.json}-charts/latency.png"
}

cmd_shape() {
    ensure_servers
    run_shape "$1"
}

cmd_test_shapes() {
    local i results=()
    ensure_servers
    for ((i = 0; i < ${#SHAPES[@]}; i++)); do
        if ((i > 0)); then
            info "cooldown ${COOLDOWN_S} s"
            sleep "$COOLDOWN_S"
        fi
        run_shape "${SHAPES[$i]}"
        results+=("$LAST_RESULT")
    done
    ok "test-shapes: ${#SHAPES[@]} tests done"
    summarize "${results[@]}"
}

# ---------------------------------------------------------------------------------
# Command line: options are read in one place, wherever they stand, and all checked
# before anything starts.

VERBS=" build start stop clean status logs test-quick test-burst test-sustained test-heavy test-mixed test-all test-limits run-custom "
# The shapes' verbs (see SHAPES).
VERBS+="test-ramp test-spike test-soak test-churn test-capacity test-shapes "

# Reads the verb and the options before and after it into the globals above. After
# run-custom, everything belongs to loadgen.
parse_args() {
    while (($# > 0)); do
        case "$1" in
            --servers | --cooldown | --messages | --duration | --tls | --soak-duration | --slo | --target)
                (($# >= 2)) || usage_error "$1 needs a value"
                set_option "$1" "$2"
                shift 2
                ;;
            --servers=* | --cooldown=* | --messages=* | --duration=* | --tls=* | --soak-duration=* | --slo=* | --target=*)
                set_option "${1%%=*}" "${1#*=}"
                shift
                ;;
            --local | --docker)
                [[ -z "$BACKEND_FORCED" || "$BACKEND_FORCED" == "${1#--}" ]] ||
                    usage_error "--local and --docker exclude each other"
                BACKEND_FORCED="${1#--}"
                shift
                ;;
            --results) CLEAN_RESULTS=1; shift ;;
            -h | --help | help) usage; exit 0 ;;
            -*) usage_error "unknown option $1" ;;
            *)
                [[ -z "$VERB" ]] || usage_error "unexpected argument '$1' after $VERB"
                [[ "$VERBS" == *" $1 "* ]] || usage_error "unknown verb '$1'"
                VERB=$1
                shift
                if [[ "$VERB" == run-custom ]]; then
                    LOADGEN_ARGS=("$@")
                    break
                fi
                ;;
        esac
    done
}

set_option() {
    case "$1" in
        --servers) SERVERS=$2; SERVERS_SET=1 ;;
        --cooldown) COOLDOWN_ARG=$2 ;;
        --messages) MESSAGES_ARG=$2 ;;
        --duration) DURATION_ARG=$2 ;;
        --tls) TLS_MODE=$2; TLS_SET=1 ;;
        --soak-duration) SOAK_DURATION_ARG=$2 ;;
        --slo) SLO=$2 ;;
        --target) TARGET=$2 ;;
    esac
}

# Checks every option and the durations from the environment, so a bad value stops
# the script here (exit 2, naming it) and never halfway through test-all.
check_options() {
    [[ -n "$VERB" ]] || { usage >&2; exit 2; }
    if [[ "$VERB" == run-custom ]] && ((${#LOADGEN_ARGS[@]} == 0)); then
        usage_error "run-custom needs loadgen flags, e.g. run-custom --mode burst --messages 500 --workers 20 --size large"
    fi
    # At most four digits, so bash arithmetic never sees an overflow or an octal "08".
    if [[ ! "$SERVERS" =~ ^[0-9]{1,4}$ ]] || ((10#$SERVERS < 1 || 10#$SERVERS > MAX_LOCAL_SERVERS)); then
        usage_error "--servers '$SERVERS': expected a whole number from 1 to $MAX_LOCAL_SERVERS"
    fi
    SERVERS=$((10#$SERVERS))
    if [[ "$BACKEND_FORCED" == docker ]] && ((SERVERS > MAX_DOCKER_SERVERS)); then
        usage_error "--servers $SERVERS: the compose file has $MAX_DOCKER_SERVERS server services (use --local for more)"
    fi
    local var
    for var in STAMPEDE_SMTP_BASE_PORT STAMPEDE_ADMIN_BASE_PORT; do
        [[ -z "${!var:-}" || "${!var}" =~ ^[1-9][0-9]{0,4}$ && "${!var}" -le 65500 ]] ||
            usage_error "$var '${!var}': expected a port number from 1 to 65500"
    done
    if [[ -n "$MESSAGES_ARG" && ! "$MESSAGES_ARG" =~ ^[1-9][0-9]{0,8}$ ]]; then
        usage_error "--messages '$MESSAGES_ARG': expected a whole number from 1 to 999999999"
    fi
    case "$TLS_MODE" in
        none | starttls | implicit) ;;
        *) usage_error "--tls '$TLS_MODE': expected none, starttls or implicit" ;;
    esac
    # Checked here, passed to loadgen as given (it reads the same grammar).
    [[ -z "$DURATION_ARG" ]] || duration_seconds --duration "$DURATION_ARG" >/dev/null
    # Compose's rule for project names; the name also goes into image and container names.
    [[ "$COMPOSE_PROJECT" =~ ^[a-z0-9][a-z0-9_-]*$ ]] ||
        usage_error "STAMPEDE_PROJECT '$COMPOSE_PROJECT': expected lowercase letters, digits, '-' and '_', starting with a letter or digit"
    if [[ -n "$COOLDOWN_ARG" ]]; then
        COOLDOWN_S="$(duration_seconds --cooldown "$COOLDOWN_ARG")"
        COOLDOWN_SET=1
    elif [[ -n "${STAMPEDE_COOLDOWN:-}" ]]; then
        COOLDOWN_S="$(duration_seconds STAMPEDE_COOLDOWN "$STAMPEDE_COOLDOWN")"
        COOLDOWN_SET=1
    fi
    check_shape_options
    check_target
    if [[ -n "${STAMPEDE_HEALTH_TIMEOUT:-}" ]]; then
        # Whole seconds: the wait loops count with bash's $SECONDS.
        HEALTH_TIMEOUT_S="$(duration_seconds STAMPEDE_HEALTH_TIMEOUT "$STAMPEDE_HEALTH_TIMEOUT" | awk '{ s = int($1); print (s < $1 ? s + 1 : s) }')"
    fi
    if [[ -n "${STAMPEDE_DOCKER_TIMEOUT:-}" ]]; then
        DOCKER_TIMEOUT_S="$(duration_seconds STAMPEDE_DOCKER_TIMEOUT "$STAMPEDE_DOCKER_TIMEOUT")"
    fi
    return 0
}

# The shapes' options: --soak-duration in the duration grammar; --slo a list of
# FIGURE OP VALUE gates (loadgen reads the grammar; this catches a typo before any
# server starts, and keeps the value one word on loadgen's command line).
check_shape_options() {
    [[ -z "$SOAK_DURATION_ARG" ]] || duration_seconds --soak-duration "$SOAK_DURATION_ARG" >/dev/null
    [[ -n "$SLO" ]] || usage_error "--slo: empty; expected gates such as '$DEFAULT_SLO'"
    local gate='[A-Za-z][A-Za-z0-9_./]*(<=|>=|==|<|>)[0-9]+(\.[0-9]+)?(ms|us|s|%)?'
    [[ "$SLO" =~ ^$gate(,$gate)*$ ]] ||
        usage_error "--slo '$SLO': expected gates FIGURE OP VALUE, comma separated, without spaces (e.g. $DEFAULT_SLO)"
}

# --target: the tests and run-custom only, loadgen on this host, no servers of ours.
check_target() {
    [[ -n "$TARGET" ]] || return 0
    [[ "$VERB" == test-* || "$VERB" == run-custom ]] ||
        usage_error "--target: only the tests and run-custom take a target ($VERB acts on this script's own servers)"
    # Host names, IPv4 and [IPv6] addresses with a port; no spaces or shell syntax.
    local address='[][A-Za-z0-9.:_-]+'
    [[ "$TARGET" =~ ^$address(,$address)*$ ]] ||
        usage_error "--target '$TARGET': expected HOST:PORT, comma separated for several"
    ((SERVERS_SET == 0)) || usage_error "--target and --servers exclude each other (list the target's addresses in --target)"
    [[ "$BACKEND_FORCED" != docker ]] || usage_error "--target and --docker exclude each other (loadgen runs on this host)"
    return 0
}

# Prints the seconds in the duration $2 (e.g. 1h30m -> 5400, 150ms -> 0.15), read by
# the `units` binary so that the script and the binaries share one grammar. A bad
# value is a usage error that names $1, the option or variable it came from.
duration_seconds() {
    local name=$1 value=$2 out status=0
    ensure_units
    out="$("$RELEASE_DIR/units" duration "$value" 2>&1)" || status=$?
    case "$status" in
        0) echo "$out" ;;
        2) usage_error "$name: $out" ;;
        *) die "$RELEASE_DIR/units failed (exit $status): $out" ;;
    esac
}

# The units binary is tiny; build it alone when missing, so checking an option never
# waits for the whole release build. Its messages go to stderr: the caller reads
# stdout.
ensure_units() {
    [[ -x "$RELEASE_DIR/units" ]] && return 0
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (https://rustup.rs)"
    info "$RELEASE_DIR/units is missing; building it (cargo build --release -p units)" >&2
    quietly cargo build --release -p units || die "cargo build --release -p units failed (see above)"
}

main() {
    parse_args "$@"
    check_options
    export_compose_env

    case "$VERB" in
        build) cmd_build ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        clean) cmd_clean ;;
        status) cmd_status ;;
        logs) cmd_logs ;;
        test-quick | test-burst | test-sustained | test-heavy | test-mixed)
            cmd_test "${VERB#test-}"
            ;;
        test-all) cmd_test_all ;;
        test-limits) cmd_test_limits ;;
        test-ramp | test-spike | test-soak | test-churn | test-capacity) cmd_shape "${VERB#test-}" ;;
        test-shapes) cmd_test_shapes ;;
        run-custom) cmd_run_custom "${LOADGEN_ARGS[@]}" ;;
    esac
}

main "$@"
