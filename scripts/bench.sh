#!/usr/bin/env bash
# Measured runs behind the figures in the README and the closing notes of the issues.
# Not part of CI: figures on a shared 2-core machine are noisy, so they are reported,
# not asserted.
#
#   scripts/bench.sh server      smtp-server vs Postfix smtp-sink, driven by smtp-source
#                                (20 sessions, 10 KiB): msg/s and server CPU seconds
#   scripts/bench.sh idle        smtp-server RSS with 1,000 idle connections open
#   scripts/bench.sh loadgen     loadgen vs smtp-source against smtp-sink (20 sessions,
#                                10 KiB, 1 and 100 messages per connection): msg/s, CPU
#   scripts/bench.sh generator   loadgen's default runtime vs --threads 1 vs smtp-source against
#                                smtp-sink (20 sessions, 1 and 10 KiB, one message per connection,
#                                whole-process msg/s, interleaved: median and range); then
#                                --threads 1 vs 2 against smtp-server pinned to the last core
#   scripts/bench.sh rates       sustained mode: achieved vs target at 50, 500, 5000/s
#   scripts/bench.sh memory      loadgen RSS after 10k, 100k and 1,000,000 small messages
#   scripts/bench.sh all         all of the above
#
# Needs release binaries (built here if missing), python3, and for `server`, `loadgen`
# and `generator` Postfix's smtp-source and smtp-sink (Debian: apt-get install postfix).
# Traffic goes to 127.0.0.1 only; every server started here is stopped by its PID.
#
# Sourced (scripts/perf-gate.sh does), it defines its helpers and runs nothing.
# Either way the working directory becomes the repository root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
OUT="$(mktemp -d "${TMPDIR:-/tmp}/stampede-bench.XXXXXX")"
REPEATS="${BENCH_REPEATS:-3}"
CLK_TCK="$(getconf CLK_TCK)"
PIDS=()
# Commands put before the binaries, e.g. a handicap in scripts/perf-gate.sh's tests.
LOADGEN_WRAP=()
SERVER_WRAP=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop "$pid"; done
    rm -rf "$OUT"
}
trap cleanup EXIT

die() { printf 'error: %s\n' "$*" >&2; exit 2; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found ($2)"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    local port=$1 i
    for i in $(seq 1 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2).close()" 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on 127.0.0.1:$port"
}

# CPU seconds (user + system) a live process has used so far.
cpu_s() { awk -v t="$CLK_TCK" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Starts the reference server on $1 with the stress settings and generous limits;
# prints its PID. Further SMTP_* settings may come from the environment.
start_smtp_server() {
    local port=$1
    (
        set -a
        # shellcheck disable=SC1091
        source docker/stress-test.env
        set +a
        SMTP_PORT=$port SMTP_ADMIN_PORT=0 SMTP_MAX_CONNECTIONS="${SMTP_MAX_CONNECTIONS_BENCH:-2000}" \
            SMTP_MAX_CONNECTIONS_PER_IP="${SMTP_MAX_CONNECTIONS_BENCH:-2000}" \
            exec "${SERVER_WRAP[@]}" "$BIN/smtp-server" >"$OUT/server-$port.log" 2>&1
    ) &
    echo $!
}

start_smtp_sink() {
    local port=$1
    # -c: count sessions; backlog 1024. smtp-sink answers every command with 250.
    local user=()
    ((EUID != 0)) || user=(-u nobody) # smtp-sink refuses to run as root without -u
    smtp-sink "${user[@]}" -c "127.0.0.1:$port" 1024 >"$OUT/sink-$port.log" 2>&1 &
    echo $!
}

# Servers are started inside $(...), so they are not this shell's children: poll.
stop() {
    local i
    kill "$1" 2>/dev/null || return 0
    for i in $(seq 1 100); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    kill -9 "$1" 2>/dev/null || true
}

# smtp-source run, 20 sessions of $4 bytes (default 10 KiB); prints "seconds
# client_cpu_s" (smtp-source reports no timing of its own).
smtp_source() {
    local port=$1 messages=$2 extra=$3 size=${4:-10240} t0 t1
    local times="$OUT/time.$BASHPID" # one per caller: perf-gate.sh runs two at once
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    /usr/bin/time -f "%U %S" -o "$times" smtp-source -s 20 -m "$messages" -l "$size" \
        -f bench@stampede.test -t sink@example.test $extra "127.0.0.1:$port" >/dev/null
    t1=$(date +%s.%N)
    echo "$t0 $t1 $(cat "$times")" | awk '{ printf "%.3f %.2f\n", $2 - $1, $3 + $4 }'
}

# loadgen run; prints "msg/s cpu_s max_rss_MiB successful late" from its result file.
loadgen_run() {
    local port=$1 file
    shift
    file="$OUT/loadgen-$RANDOM$RANDOM.json"
    "${LOADGEN_WRAP[@]}" "$BIN/loadgen" --servers "127.0.0.1:$port" --quiet --no-preflight -o "$file" "$@" >/dev/null
    python3 - "$file" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
m = r["metrics"]; g = (r.get("run") or {}).get("generator") or {}
print("%.1f %.2f %.1f %d %d %.4f" % (m["messages_per_second"], g.get("cpu_seconds", 0),
      g.get("max_rss_bytes", 0) / 1048576, m["successful_messages"], m.get("late_sends", 0),
      m["duration_seconds"]))
EOF
}

build() {
    if [[ ! -x "$BIN/smtp-server" || ! -x "$BIN/loadgen" ]]; then
        echo "==> cargo build --release -p server -p loadgen" >&2
        cargo build --release -p server -p loadgen >&2
    fi
}

bench_server() {
    need smtp-source "apt-get install postfix"
    need smtp-sink "apt-get install postfix"
    local n=20000 mode port pid secs cpu0 cpu1 i
    echo "== server: smtp-source -s 20 -m $n -l 10240, msg/s and server CPU s (repeats: $REPEATS)"
    printf '%-12s %-14s %8s %8s %8s\n' server mode seconds msg/s cpu_s
    for mode in "1/conn" "-d"; do
        local extra=""; [[ $mode == -d ]] && extra="-d"
        for i in $(seq 1 "$REPEATS"); do
            for srv in smtp-server smtp-sink; do
                port=$(free_port)
                if [[ $srv == smtp-server ]]; then pid=$(start_smtp_server "$port"); else pid=$(start_smtp_sink "$port"); fi
                PIDS+=("$pid")
                wait_port "$port"
                cpu0=$(cpu_s "$pid")
                read -r secs _ < <(smtp_source "$port" "$n" "$extra")
                cpu1=$(cpu_s "$pid")
                stop "$pid"
                printf '%-12s %-14s %8s %8.0f %8.2f\n' "$srv" "$mode" "$secs" \
                    "$(echo "$n $secs" | awk '{ print $1 / $2 }')" "$(echo "$cpu1 $cpu0" | awk '{ print $1 - $2 }')"
            done
        done
    done
}

bench_idle() {
    local port pid before after
    port=$(free_port)
    pid=$(start_smtp_server "$port"); PIDS+=("$pid")
    wait_port "$port"
    sleep 0.5
    before=$(rss_kib "$pid")
    # Open 1,000 connections, read each banner, hold them idle while RSS is read.
    python3 - "$port" "$pid" <<'EOF' >"$OUT/idle.txt"
import socket, sys, time
port, pid = int(sys.argv[1]), sys.argv[2]
socks = []
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", port), 5)
    assert s.recv(512).startswith(b"220"), "banner"
    socks.append(s)
time.sleep(1.0)
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")][0].split()[1]
print(rss)
EOF
    after=$(cat "$OUT/idle.txt")
    stop "$pid"
    echo "== idle: smtp-server RSS with 1,000 idle connections"
    echo "RSS before ${before} KiB, with 1,000 idle connections ${after} KiB:" \
        "$(( (after - before) * 1024 / 1000 )) bytes per connection"
}

bench_loadgen() {
    need smtp-source "apt-get install postfix"
    need smtp-sink "apt-get install postfix"
    local n=10000 port pid i r secs cpu
    echo "== loadgen vs smtp-source against smtp-sink: 20 sessions, 10 KiB, $n messages (repeats: $REPEATS)"
    printf '%-12s %-10s %8s %8s\n' client per-conn msg/s cpu_s
    port=$(free_port)
    pid=$(start_smtp_sink "$port"); PIDS+=("$pid")
    wait_port "$port"
    for i in $(seq 1 "$REPEATS"); do
        for per in 1 100; do
            local extra=""; [[ $per == 100 ]] && extra="-d"
            read -r secs cpu < <(smtp_source "$port" "$n" "$extra")
            printf '%-12s %-10s %8.0f %8.2f\n' smtp-source "$( [[ $per == 100 ]] && echo "-d (500)" || echo 1)" \
                "$(echo "$n $secs" | awk '{ print $1 / $2 }')" "$cpu"
            r=($(loadgen_run "$port" --messages "$n" --workers 20 --size 10240 --msgs-per-conn "$per"))
            printf '%-12s %-10s %8.0f %8.2f\n' loadgen "$per" "${r[0]}" "${r[1]}"
        done
    done
    stop "$pid"
}

# Messages per second of one whole process (start to exit, as smtp-source is timed):
# `rate N command...`.
rate() {
    local n=$1 t0 t1
    shift
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s.%N)
    echo "$n $t0 $t1" | awk '{ printf "%.0f\n", $1 / ($3 - $2) }'
}

# "median (min–max)" of the numbers on stdin.
median_range() {
    sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
        printf "%8.0f (%s–%s)", m, v[1], v[NR] }'
}

bench_generator() {
    need smtp-source "apt-get install postfix"
    need smtp-sink "apt-get install postfix"
    local n=10000 port pid size v cores last
    echo "== generator: whole-process msg/s against smtp-sink, 20 sessions, 1 message per connection," \
        "$n messages (repeats: $REPEATS, interleaved)"
    port=$(free_port)
    pid=$(start_smtp_sink "$port"); PIDS+=("$pid")
    wait_port "$port"
    local lg=("$BIN/loadgen" --servers "127.0.0.1:$port" --quiet --no-preflight -o "$OUT/gen.json"
        --messages "$n" --workers 20 --msgs-per-conn 1)
    for size in 1024 10240; do
        rm -f "$OUT"/gen-*.txt
        for _ in $(seq 1 "$REPEATS"); do
            rate "$n" "${lg[@]}" --size "$size" >>"$OUT/gen-default.txt"
            rate "$n" "${lg[@]}" --size "$size" --threads 1 >>"$OUT/gen-threads1.txt"
            rate "$n" smtp-source -s 20 -m "$n" -l "$size" -f bench@stampede.test -t sink@example.test \
                "127.0.0.1:$port" >>"$OUT/gen-smtp-source.txt"
        done
        for v in default threads1 smtp-source; do
            printf '%6s B  %-12s %s\n' "$size" "$v" "$(median_range <"$OUT/gen-$v.txt")"
        done
    done
    stop "$pid"

    # Scaling: the server has a core of its own; more generator threads must not be slower.
    cores=$(nproc)
    last=$((cores - 1))
    ((cores >= 2)) || { echo "(scaling check needs 2 cores)"; return; }
    echo "== generator scaling: smtp-server pinned to core $last (taskset), 10 KiB, $n messages"
    port=$(free_port)
    pid=$(start_smtp_server "$port"); PIDS+=("$pid")
    wait_port "$port"
    taskset -a -p -c "$last" "$pid" >/dev/null
    lg=("$BIN/loadgen" --servers "127.0.0.1:$port" --quiet --no-preflight -o "$OUT/gen.json"
        --messages "$n" --workers 20 --msgs-per-conn 1 --size 10240)
    rm -f "$OUT"/gen-*.txt
    for _ in $(seq 1 "$REPEATS"); do
        rate "$n" "${lg[@]}" --threads 1 >>"$OUT/gen-threads1.txt"
        rate "$n" "${lg[@]}" --threads 2 >>"$OUT/gen-threads2.txt"
    done
    for v in threads1 threads2; do
        printf '%-12s %s\n' "$v" "$(median_range <"$OUT/gen-$v.txt")"
    done
    stop "$pid"
}

bench_rates() {
    local port pid rate dur per r
    echo "== sustained: achieved vs target against smtp-server (1 KiB)"
    printf '%8s %6s %8s %10s %8s %6s %8s\n' target dur/s per-conn achieved error ok late
    port=$(free_port)
    pid=$(start_smtp_server "$port"); PIDS+=("$pid")
    wait_port "$port"
    for spec in "10 30 1" "50 20 1" "500 20 1" "5000 20 100" "5000 20 1"; do
        read -r rate dur per <<<"$spec"
        r=($(loadgen_run "$port" --mode sustained --rate "$rate" --duration "$dur" --size small \
            --msgs-per-conn "$per"))
        printf '%8s %6s %8s %10s %7.2f%% %6s %8s\n' "$rate" "$dur" "$per" "${r[0]}" \
            "$(echo "${r[0]} $rate" | awk '{ print 100 * ($1 - $2) / $2 }')" "${r[3]}" "${r[4]}"
    done
    stop "$pid"
}

bench_memory() {
    local port pid n r
    echo "== loadgen memory: small messages, 20 workers, 100 per connection, against smtp-server"
    printf '%10s %8s %8s %10s\n' messages msg/s cpu_s max_rss_MiB
    port=$(free_port)
    pid=$(start_smtp_server "$port"); PIDS+=("$pid")
    wait_port "$port"
    for n in 10000 100000 1000000; do
        r=($(loadgen_run "$port" --messages "$n" --workers 20 --size small --msgs-per-conn 100))
        printf '%10s %8.0f %8.2f %10s\n' "$n" "${r[0]}" "${r[1]}" "${r[2]}"
    done
    stop "$pid"
}

[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0
build
case "${1:-}" in
    server) bench_server ;;
    idle) bench_idle ;;
    loadgen) bench_loadgen ;;
    generator) bench_generator ;;
    rates) bench_rates ;;
    memory) bench_memory ;;
    all) bench_server; bench_idle; bench_loadgen; bench_generator; bench_rates; bench_memory ;;
    *) sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
