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
#   scripts/bench.sh tls         smtp-server over STARTTLS vs plaintext (20 sessions, 1 KiB):
#                                msg/s with 1 message per connection (resumption on and
#                                off) and 100 per connection, handshake p50/p99, server CPU
#                                seconds per 10,000 handshakes (interleaved: median and range)
#   scripts/bench.sh tls-idle    smtp-server RSS with 1,000 idle implicit-TLS connections
#   scripts/bench.sh limits-cost what resource management costs: the same burst (50 workers,
#                                10 KiB, one message per connection) against smtp-server with
#                                the stress settings and with every limit out of reach,
#                                interleaved, a fresh server per run: msg/s and server CPU per
#                                message (median and range), then `analyze compare` over the
#                                runs (BENCH_LIMITS_REPEATS runs a side, default 8;
#                                BENCH_LIMITS_MESSAGES a run, default 20000); with
#                                BENCH_LIMITS_PERF=1 also perf's share of the server's CPU
#                                in admission, memory accounting and timeout timers
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
# prints its PID. Further SMTP_* settings may come from the environment (the TLS
# cases set SMTP_TLS_SELF_SIGNED and friends that way).
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
    if [[ ! -x "$BIN/smtp-server" || ! -x "$BIN/loadgen" || ! -x "$BIN/analyze" ]]; then
        echo "==> cargo build --release -p server -p loadgen -p analyze" >&2
        cargo build --release -p server -p loadgen -p analyze >&2
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

# The reference server with a generated certificate (its CA in $OUT/ca.pem, for
# loadgen's --tls-ca: certificates are checked as a real client would) and, when $2
# is given, implicit TLS on that port; prints its PID.
start_tls_server() {
    local port=$1 implicit=${2:-}
    rm -f "$OUT/ca.pem"
    if [[ -n "$implicit" ]]; then
        SMTP_TLS_SELF_SIGNED=true SMTP_TLS_CA_OUT="$OUT/ca.pem" SMTP_IMPLICIT_TLS_PORT="$implicit" \
            start_smtp_server "$port"
    else
        SMTP_TLS_SELF_SIGNED=true SMTP_TLS_CA_OUT="$OUT/ca.pem" start_smtp_server "$port"
    fi
}

# loadgen run for the TLS cases; prints "msg/s handshakes resumed tls_p50_ms
# tls_p99_ms successful" from its result file.
loadgen_tls_run() {
    local port=$1 file
    shift
    file="$OUT/loadgen-tls-$RANDOM$RANDOM.json"
    "$BIN/loadgen" --servers "127.0.0.1:$port" --quiet --no-preflight -o "$file" "$@" >/dev/null
    python3 - "$file" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
m, tls = r["metrics"], r.get("tls") or {}
phase = (m.get("phases_ms") or {}).get("tls") or {}
print("%.1f %d %d %.3f %.3f %d" % (m["messages_per_second"], tls.get("handshakes", 0),
      tls.get("resumed", 0), phase.get("p50", 0), phase.get("p99", 0), m["successful_messages"]))
EOF
}

# The issue's figures: one server, 20 sessions, 1 KiB; plaintext against STARTTLS with
# session resumption on and off, one message per connection and 100 per connection.
# The cases run interleaved, REPEATS times, on one server, so that drift of a shared
# machine spreads over all of them; its CPU time is read around each run.
bench_tls() {
    local n="${BENCH_TLS_MESSAGES:-10000}" port pid i case cpu0 cpu1 r
    local cases=("plain 1" "starttls-resume 1" "starttls-noresume 1" "plain 100" "starttls-resume 100")
    echo "== tls: smtp-server, 20 sessions, 1 KiB, $n messages per run (repeats: $REPEATS, interleaved)"
    port=$(free_port)
    pid=$(start_tls_server "$port"); PIDS+=("$pid")
    wait_port "$port"
    for ((i = 0; i < 100; i++)); do [[ -s "$OUT/ca.pem" ]] && break; sleep 0.05; done
    [[ -s "$OUT/ca.pem" ]] || die "smtp-server wrote no CA to $OUT/ca.pem: $(tail -n 3 "$OUT/server-$port.log")"
    rm -f "$OUT"/tls-*.txt
    for _ in $(seq 1 "$REPEATS"); do
        for case in "${cases[@]}"; do
            local name=${case% *} per=${case#* } flags=()
            case "$name" in
                starttls-resume) flags=(--tls starttls --tls-ca "$OUT/ca.pem" --tls-resume on) ;;
                starttls-noresume) flags=(--tls starttls --tls-ca "$OUT/ca.pem" --tls-resume off) ;;
            esac
            cpu0=$(cpu_s "$pid")
            r=($(loadgen_tls_run "$port" --messages "$n" --workers 20 --size 1024 --msgs-per-conn "$per" "${flags[@]}"))
            cpu1=$(cpu_s "$pid")
            ((r[5] == n)) || echo "warning: $name/$per: ${r[5]} of $n messages succeeded" >&2
            # msg/s, handshakes, resumed, tls p50, tls p99, server CPU s
            echo "${r[0]} ${r[1]} ${r[2]} ${r[3]} ${r[4]} $(echo "$cpu1 $cpu0" | awk '{ print $1 - $2 }')" \
                >>"$OUT/tls-$name-$per.txt"
        done
    done
    stop "$pid"
    python3 - "$OUT" "${cases[@]}" <<'EOF'
import statistics, sys
out, cases = sys.argv[1], sys.argv[2:]
rows = {}
for case in cases:
    name, per = case.split()
    rows[case] = [list(map(float, l.split())) for l in open(f"{out}/tls-{name}-{per}.txt")]
med = lambda case, i: statistics.median(r[i] for r in rows[case])
print("%-18s %8s %18s %8s %8s %8s %8s %9s %16s" % ("case", "per-conn", "msg/s (range)", "% plain",
      "resumed", "tls p50", "tls p99", "srv CPU s", "TLS CPU s/10k hs"))
for case in cases:
    name, per = case.split()
    vals = [r[0] for r in rows[case]]
    plain = med("plain " + per, 0)
    hs = med(case, 1)
    cpu = med(case, 5)
    # What the handshakes (and encryption) cost the server beyond the same plaintext run.
    extra = (cpu - med("plain " + per, 5)) / hs * 10000 if hs else None
    print("%-18s %8s %8.0f (%.0f-%.0f) %7.0f%% %8s %8s %8s %9.2f %16s" % (
        name, per, statistics.median(vals), min(vals), max(vals), 100 * statistics.median(vals) / plain,
        "%.0f%%" % (100 * med(case, 2) / hs) if hs else "-",
        "%.3f" % med(case, 3) if hs else "-", "%.3f" % med(case, 4) if hs else "-",
        cpu, "%.2f" % extra if extra is not None else "-"))
print("(msg/s and CPU: medians over the repeats, msg/s range in brackets; % plain: of the plaintext"
      " median with the same messages per connection; tls p50/p99: the handshake phase in ms;"
      " srv CPU s: the server's CPU over the run; TLS CPU s/10k hs: its CPU beyond the plaintext"
      " run's, per 10,000 handshakes)")
EOF
}

bench_tls_idle() {
    local port implicit pid before after
    port=$(free_port)
    implicit=$(free_port)
    pid=$(start_tls_server "$port" "$implicit"); PIDS+=("$pid")
    wait_port "$implicit"
    sleep 0.5
    before=$(rss_kib "$pid")
    # 1,000 implicit-TLS connections, each handshake finished and the banner read, held
    # idle while RSS is read.
    python3 - "$implicit" "$pid" "$OUT/ca.pem" <<'EOF' >"$OUT/tls-idle.txt"
import resource, socket, ssl, sys, time
port, pid, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
ctx = ssl.create_default_context(cafile=ca)
conns = []
for _ in range(1000):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), 5), server_hostname="localhost")
    assert s.recv(512).startswith(b"220"), "banner"
    conns.append(s)
time.sleep(1.0)
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")][0].split()[1]
print(rss)
EOF
    after=$(cat "$OUT/tls-idle.txt")
    stop "$pid"
    echo "== tls-idle: smtp-server RSS with 1,000 idle implicit-TLS connections"
    echo "RSS before ${before} KiB, with 1,000 idle TLS connections ${after} KiB:" \
        "$(((after - before) * 1024 / 1000)) bytes per connection"
}

# Every limit smtp-server has, out of reach of any run here (SMTP_* settings on top of
# the stress settings): what is left is the bookkeeping itself.
LIMITS_OUT_OF_REACH=(
    SMTP_MAX_CONNECTIONS=1000000 SMTP_MAX_CONNECTIONS_PER_IP=1000000
    SMTP_MAX_REQUESTS_PER_WINDOW=4294967295 SMTP_MAX_REQUESTS_PER_WINDOW_PER_IP=4294967295
    SMTP_RATE_LIMIT_WINDOW=1s SMTP_MAX_MESSAGE_SIZE=1024GiB SMTP_MAX_RECIPIENTS=1000000
    SMTP_PER_CONNECTION_MEMORY_LIMIT=1024GiB SMTP_MAX_MEMORY_USAGE=1024GiB
    SMTP_CONNECTION_TIMEOUT=1h SMTP_IDLE_TIMEOUT=1h SMTP_SESSION_TIMEOUT=1h
)

# smtp-server on $1 with exactly the stress settings of docker/stress-test.env, plus
# the SMTP_* assignments given after the port; prints its PID.
start_stress_server() {
    local port=$1
    shift
    (
        set -a
        # shellcheck disable=SC1091
        source docker/stress-test.env
        set +a
        exec env "$@" SMTP_PORT="$port" SMTP_ADMIN_PORT=0 SMTP_BIND=127.0.0.1 \
            "${SERVER_WRAP[@]}" "$BIN/smtp-server" >"$OUT/server-$port.log" 2>&1
    ) &
    echo $!
}

# One limits-cost run's figures from its result file: "msg/s successful p99_ms".
limits_cost_figures() {
    python3 - "$1" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
lat = m.get("latency_ms") or {}
print("%.1f %d %.3f" % (m["messages_per_second"], m["successful_messages"], lat.get("p99", 0)))
EOF
}

# The cost of resource management. Both sides run the same code (admission, the
# memory budget and the timeouts have no off switch): one with the stress settings,
# whose limits a 50-worker burst stays inside, one with every limit out of reach, so
# any difference is what the limits in reach cost. Each run gets a fresh server on the
# same port (so `analyze compare` sees one target), the sides alternate A B, B A, ...
# so that a drifting machine spreads over both, and the load average is logged per
# run: other work on the machine shows as noise, not as a difference.
bench_limits_cost() {
    local n="${BENCH_LIMITS_MESSAGES:-20000}" repeats="${BENCH_LIMITS_REPEATS:-8}"
    local port pid i side cpu0 cpu1 file load order us
    local -a r
    echo "== limits-cost: smtp-server, 50 workers, 10 KiB, 1 message per connection, $n messages" \
        "a run, $repeats runs a side (A B, B A, ...), a fresh server per run"
    port=$(free_port)
    mkdir -p "$OUT/limits-cost"
    rm -f "$OUT"/limits-cost/*
    printf '%-4s %-10s %10s %12s %10s %8s %7s\n' run side msg/s "srv µs/msg" p99_ms ok load1
    for ((i = 1; i <= repeats; i++)); do
        order="stress unlimited"
        ((i % 2 == 0)) && order="unlimited stress"
        for side in $order; do
            if [[ $side == stress ]]; then
                pid=$(start_stress_server "$port")
            else
                pid=$(start_stress_server "$port" "${LIMITS_OUT_OF_REACH[@]}")
            fi
            PIDS+=("$pid")
            wait_port "$port"
            load=$(cut -d' ' -f1 /proc/loadavg)
            file="$OUT/limits-cost/$side-$i.json"
            cpu0=$(cpu_s "$pid")
            "$BIN/loadgen" --servers "127.0.0.1:$port" --quiet --no-preflight -o "$file" \
                --messages "$n" --workers 50 --size 10240 --msgs-per-conn 1 >/dev/null ||
                echo "warning: loadgen exited $? ($side run $i)" >&2
            cpu1=$(cpu_s "$pid")
            stop "$pid"
            read -r -a r < <(limits_cost_figures "$file")
            ((r[1] == n)) || echo "warning: $side run $i: ${r[1]} of $n messages succeeded" >&2
            us=$(echo "$cpu1 $cpu0 ${r[1]}" | awk '{ printf "%.1f", ($1 - $2) * 1e6 / $3 }')
            echo "$side $i ${r[0]} $us ${r[2]} ${r[1]} $load" >>"$OUT/limits-cost/runs.txt"
            printf '%-4s %-10s %10.0f %12s %10s %8s %7s\n' "$i" "$side" "${r[0]}" "$us" "${r[2]}" "${r[1]}" "$load"
        done
    done
    python3 - "$OUT/limits-cost/runs.txt" <<'EOF'
import os, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
side = lambda s, i: [float(r[i]) for r in rows if r[0] == s]
for name, i in (("msg/s", 2), ("server CPU µs/msg", 3), ("p99 ms", 4)):
    a, b = side("stress", i), side("unlimited", i)
    ma, mb = statistics.median(a), statistics.median(b)
    print("%-18s stress %8.1f (%.1f-%.1f)   out of reach %8.1f (%.1f-%.1f)   stress vs out of reach %+.1f%%" % (
        name, ma, min(a), max(a), mb, min(b), max(b), 100 * (ma - mb) / mb))
loads = [float(r[6]) for r in rows]
print("load average (1 min) at the runs' starts: %.2f-%.2f on %d cores" % (min(loads), max(loads), os.cpu_count()))
EOF
    echo "-- analyze compare --base <every limit out of reach> --new <stress settings> --threshold 5%"
    "$BIN/analyze" compare --base "$OUT"/limits-cost/unlimited-*.json \
        --new "$OUT"/limits-cost/stress-*.json --threshold 5% ||
        echo "(analyze compare exited $?: a figure is worse with the stress limits by more than 5%;" \
            "significantly so only where its p is below 0.05)"
}

# Where resource management shows in a profile: one stress-settings run of the same
# burst under `perf record`, then the share of the server's CPU samples spent in
# (and below) admission, the connection permit, memory accounting and the timeout
# timers. Inclusive shares of separate call paths, so their sum is an estimate.
limits_cost_profile() {
    need perf "apt-get install linux-perf"
    local n="${BENCH_LIMITS_MESSAGES:-20000}" port pid perf_pid
    echo "== limits-cost profile: perf record of smtp-server (stress settings) during one run of the same burst"
    port=$(free_port)
    pid=$(start_stress_server "$port"); PIDS+=("$pid")
    wait_port "$port"
    perf record -F 999 -g --call-graph dwarf,16384 -p "$pid" -o "$OUT/limits-cost.perf" \
        >"$OUT/perf-record.log" 2>&1 &
    perf_pid=$!
    sleep 0.5
    "$BIN/loadgen" --servers "127.0.0.1:$port" --quiet --no-preflight -o "$OUT/limits-cost-perf.json" \
        --messages "$n" --workers 50 --size 10240 --msgs-per-conn 1 >/dev/null ||
        echo "warning: loadgen exited $? (profiled run)" >&2
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" || true
    stop "$pid"
    perf report -i "$OUT/limits-cost.perf" --children --stdio -g none --percent-limit 0 \
        --sort symbol 2>/dev/null | python3 -c '
import re, sys
PARTS = [
    ("admission: Admission::admit", r"\] server::admission::Admission::admit$"),
    ("admission: ConnectionPermit drop", r"\] <server::admission::ConnectionPermit as core::ops::drop::Drop>::drop$"),
    ("memory accounting: InputBuffer::sync_charge", r"\] (server::input::InputBuffer::)?sync_charge( \(inlined\))?$"),
    ("memory accounting: MemoryCharge drop", r"\] <server::memory::MemoryCharge as core::ops::drop::Drop>::drop$"),
    ("timeouts: Sleep::poll", r"\] <tokio::time::sleep::Sleep as core::future::future::Future>::poll$"),
    ("timeouts: Sleep::new_timeout", r"\] tokio::time::sleep::Sleep::new_timeout$"),
    ("timeouts: Sleep drop", r"\] (core::ptr::)?drop_in_place<core::option::Option<tokio::time::sleep::Sleep>>( \(inlined\))?$"),
]
rows = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+[\d.]+%\s+(\[.\] .*?)\s*(-\s+-\s*)?$", line)
    if not m:
        continue
    for name, pattern in PARTS:
        if re.search(pattern, m.group(2)):
            rows[name] = max(rows.get(name, 0.0), float(m.group(1)))
for name, _ in PARTS:
    print("%-46s %6.2f%%" % (name, rows.get(name, 0.0)))
print("%-46s %6.2f%% of the server'"'"'s CPU samples" % ("together (estimate)", sum(rows.values())))
'
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
    tls) bench_tls ;;
    tls-idle) bench_tls_idle ;;
    all) bench_server; bench_idle; bench_loadgen; bench_generator; bench_rates; bench_memory; bench_tls; bench_tls_idle
        bench_limits_cost ;;
    limits-cost)
        bench_limits_cost
        if [[ "${BENCH_LIMITS_PERF:-0}" == 1 ]]; then limits_cost_profile; fi
        ;;
    *) sed -n '2,31s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
