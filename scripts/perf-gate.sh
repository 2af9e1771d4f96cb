#!/usr/bin/env bash
# The performance gate: ratios measured in one run, so the machine's own speed cancels
# out, gated with `analyze compare`'s significance test.
#
#   scripts/perf-gate.sh measure DIR
#       Measures each ratio below PERF_GATE_REPEATS times (default 5), the two sides
#       of a ratio back to back and their order alternating from one repeat to the
#       next; writes one result file per repeat, DIR/<ratio>/run-<N>.json (replacing
#       the runs a previous measure left there).
#   scripts/perf-gate.sh compare BASE NEW [--threshold 30%]
#       `analyze compare --base BASE/<ratio>/*.json --new NEW/<ratio>/*.json` for each
#       ratio; prints one markdown table (also appended to $GITHUB_STEP_SUMMARY when
#       set). Exit 1 when a ratio dropped significantly (Mann-Whitney U, p < 0.05,
#       which takes at least 4 runs a side) and by more than the threshold.
#   scripts/perf-gate.sh gate BASE DIR [--threshold 30%]
#       What CI runs: measure DIR, compare BASE DIR; when that finds a regression,
#       measure once more (DIR/confirm) and fail only if the second measurement
#       regresses too. A slower build is slower both times; a burst of load from
#       something else on a shared machine rarely lasts through both, and a gate
#       that fails on noise teaches people to ignore it.
#
# The ratios (every run against 127.0.0.1; 20 sessions, one message per connection):
#   loadgen-1k   loadgen msg/s / smtp-source msg/s, both against smtp-sink, 1 KiB
#   loadgen-10k  the same with 10 KiB messages
#   server       smtp-server msg/s / smtp-sink msg/s, both driven by smtp-source, 10 KiB
#   sustained    achieved / target msg/s of `loadgen --mode sustained` against
#                smtp-sink at a rate this machine holds easily
# loadgen runs with --threads 1 and smtp-server with one tokio worker thread
# (TOKIO_WORKER_THREADS=1), as smtp-source and smtp-sink are single processes: on a
# machine shared with other work, the scheduler gives each runnable thread its share,
# so a two-thread side would gain on a one-thread side whenever the machine is busy
# and the ratio would follow the machine's load instead of the code.
# A ratio result is a stampede.result.v1 file whose metrics.messages_per_second holds
# the ratio (a plain number, not a rate); every other figure is 0, so only the ratio
# can move. run.config names both sides and their own msg/s.
#
# Test only: PERF_GATE_HANDICAP=loadgen:50 (or smtp-server:50) stops that process for
# 50% of every 20 ms (SIGSTOP/SIGCONT) while it runs, the way a build that needs twice
# the CPU per message would slow it; the gate must then fail. Runs measured with a
# handicap record it in run.config.handicap, and `compare` refuses them as a baseline.
#
# Needs release builds of loadgen, smtp-server and analyze, python3, jq, and Postfix's
# smtp-source and smtp-sink (Debian: apt-get install postfix; its daemon may stay
# stopped). Helpers (servers, timing, cleanup by PID) come from scripts/bench.sh.
set -euo pipefail
CALLER_PWD=$PWD
# shellcheck source=scripts/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench.sh"

RATIOS=(loadgen-1k loadgen-10k server sustained)
GATE_REPEATS="${PERF_GATE_REPEATS:-5}"
DEFAULT_THRESHOLD=30%
# Each side of a ratio runs ROUNDS times per repeat, alternating with the other
# side, ROUND_MESSAGES each: a third of a second or so at this machine's rates, long
# enough that process start-up stays a small part of smtp-source's wall-clock time.
ROUNDS=5
ROUND_MESSAGES=1000
# Sustained: 5% of what loadgen reaches against smtp-sink here, for 2 seconds.
SUSTAINED_RATE=300
SUSTAINED_SECONDS=2
SESSIONS=20
HANDICAP_PERIOD_S=0.02

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}" >&2; exit 2; }

# An absolute path for a path the caller gave (bench.sh moved to the repository root).
from_caller() { [[ $1 == /* ]] && echo "$1" || echo "$CALLER_PWD/$1"; }

# Runs "$@" stopped for $1 percent of every HANDICAP_PERIOD_S; forwards SIGTERM and
# SIGINT to it and leaves with its exit status.
HANDICAP_PY='
import signal, subprocess, sys, time
percent, period, cmd = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
child = subprocess.Popen(cmd)
def forward(sig, _frame):
    child.send_signal(signal.SIGCONT)
    child.send_signal(sig)
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
while child.poll() is None:
    time.sleep(period * (100 - percent) / 100)
    child.send_signal(signal.SIGSTOP)
    time.sleep(period * percent / 100)
    child.send_signal(signal.SIGCONT)
sys.exit(child.wait())
'

# Reads PERF_GATE_HANDICAP into LOADGEN_WRAP or SERVER_WRAP (see bench.sh).
apply_handicap() {
    local spec=${PERF_GATE_HANDICAP:-} target percent
    [[ -n $spec ]] || return 0
    target=${spec%%:*}
    percent=${spec#*:}
    if ! [[ $spec == *:* && $percent =~ ^[0-9]+$ ]] || ((percent < 1 || percent > 95)); then
        die "PERF_GATE_HANDICAP=$spec: expected loadgen:PERCENT or smtp-server:PERCENT (1-95)"
    fi
    local wrap=(python3 -c "$HANDICAP_PY" "$percent" "$HANDICAP_PERIOD_S")
    case $target in
        loadgen) LOADGEN_WRAP=("${wrap[@]}") ;;
        smtp-server) SERVER_WRAP=("${wrap[@]}") ;;
        *) die "PERF_GATE_HANDICAP=$spec: the handicapped side is loadgen or smtp-server" ;;
    esac
    echo "perf-gate: TEST HANDICAP: $target stopped $percent% of every ${HANDICAP_PERIOD_S}s" >&2
}

# Seconds of one smtp-source run against port $1: $3 messages of $2 bytes.
source_seconds() {
    local timing secs
    # Not `read < <(...)`: a failure inside a process substitution would go unseen.
    timing=$(smtp_source "$1" "$3" "" "$2")
    read -r secs _ <<<"$timing"
    echo "$secs"
}

# Seconds of one loadgen burst run against port $1, $3 messages of $2 bytes (its own
# measured duration); refuses a run with any failure.
loadgen_seconds() {
    local port=$1 size=$2 n=$3 out r
    out=$(loadgen_run "$port" --threads 1 --messages "$n" --workers "$SESSIONS" --size "$size" \
        --msgs-per-conn 1)
    read -ra r <<<"$out"
    ((r[3] == n)) || die "loadgen: ${r[3]} of $n messages succeeded against 127.0.0.1:$port"
    echo "${r[5]}"
}

# Achieved msg/s of one sustained run; refuses a run with any failure.
loadgen_sustained_rate() {
    local port=$1 out r n=$((SUSTAINED_RATE * SUSTAINED_SECONDS))
    out=$(loadgen_run "$port" --threads 1 --mode sustained --rate "$SUSTAINED_RATE" \
        --duration "$SUSTAINED_SECONDS" --size 1024 --msgs-per-conn 1)
    read -ra r <<<"$out"
    ((r[3] == n)) || die "loadgen sustained: ${r[3]} of $n messages succeeded"
    echo "${r[0]}"
}

# Both sides of a ratio in ROUNDS rounds of ROUND_MESSAGES each, back to back, the
# side that goes first alternating from round to round (and repeat to repeat). $2
# and $3 are commands that take a message count and print the seconds it took.
# Prints the two sides' msg/s in the round whose ratio is the median: a burst of
# load from elsewhere on the machine that hits one side of one round moves that
# round's ratio, not the median.
interleaved() {
    local repeat=$1 num_cmd=$2 den_cmd=$3 round num_t den_t
    for round in $(seq 1 "$ROUNDS"); do
        if (((repeat + round) % 2 == 0)); then
            num_t=$($num_cmd "$ROUND_MESSAGES"); den_t=$($den_cmd "$ROUND_MESSAGES")
        else
            den_t=$($den_cmd "$ROUND_MESSAGES"); num_t=$($num_cmd "$ROUND_MESSAGES")
        fi
        echo "$num_t $den_t"
    done | awk -v n="$ROUND_MESSAGES" '
        { num[NR] = n / $1; den[NR] = n / $2; ratio[NR] = num[NR] / den[NR]; order[NR] = NR }
        END {
            for (i = 1; i <= NR; i++) for (j = i + 1; j <= NR; j++)
                if (ratio[order[j]] < ratio[order[i]]) { t = order[i]; order[i] = order[j]; order[j] = t }
            m = order[int((NR + 1) / 2)]
            printf "%.1f %.1f\n", num[m], den[m]
        }'
}

# Writes one ratio result. Arguments: file ratio description value message_size
# workers config_json (the sides and their figures).
write_ratio() {
    python3 - "$@" "${PERF_GATE_HANDICAP:-}" "$(git rev-parse HEAD 2>/dev/null || true)" <<'EOF'
import datetime, json, os, platform, socket, sys
path, ratio, description, value, size, workers, config, handicap, sha = sys.argv[1:10]
now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
config = json.loads(config)
config.update({"ratio": ratio, "description": description, "threads_per_side": 1,
               "note": "metrics.messages_per_second holds the ratio, not a rate"})
if handicap:
    config["handicap"] = handicap
zero = dict.fromkeys(["avg", "min", "max", "p50", "p90", "p95", "p99", "p99_9"], 0.0)
result = {
    "schema": "stampede.result.v1",
    "test_type": "perf-gate " + ratio,
    "servers": [], "port": 0,
    "message_size": int(size),
    "concurrent_workers": int(workers) if workers else None,
    "target_rate": None,
    "metrics": {
        "total_messages": 0, "successful_messages": 0, "failed_messages": 0,
        "connection_errors": 0, "total_bytes_sent": 0, "duration_seconds": 0.0,
        "messages_per_second": float(value), "latency_ms": zero,
        "error_breakdown": {}, "start_time": now, "end_time": now,
    },
    "run": {
        "name": "perf-gate", "interrupted": False, "config": config,
        "tool_version": "scripts/perf-gate.sh", "git_sha": sha or None,
        "host": {"hostname": socket.gethostname(), "cpus": os.cpu_count() or 0,
                 "os": platform.system().lower()},
    },
}
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
EOF
}

ratio_of() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a / b }'; }

# One ratio of two tools timed in interleaved rounds, written to $1/$3/run-$2.json.
# Args: DIR REPEAT NAME SIZE NUMERATOR-TOOL DENOMINATOR-TOOL DESCRIPTION CMD-A CMD-B.
measure_pair() {
    local dir=$1 i=$2 name=$3 size=$4 num_tool=$5 den_tool=$6 what=$7 sides num den value
    sides=$(interleaved "$i" "$8" "$9")
    read -r num den <<<"$sides"
    value=$(ratio_of "$num" "$den")
    write_ratio "$dir/$name/run-$i.json" "$name" "$what" "$value" "$size" "$SESSIONS" \
        "{\"numerator\": {\"tool\": \"$num_tool\", \"messages_per_second\": $num}, \"denominator\": {\"tool\": \"$den_tool\", \"messages_per_second\": $den}, \"rounds\": $ROUNDS, \"messages_per_round\": $ROUND_MESSAGES}"
    printf '  %-12s %9.1f / %9.1f = %s\n' "$name" "$num" "$den" "$value" >&2
}

# One repeat of every ratio; the files go to $1/<ratio>/run-$2.json.
measure_repeat() {
    local dir=$1 i=$2 sink=$3 server=$4 size num value
    for size in 1024 10240; do
        measure_pair "$dir" "$i" "loadgen-$((size / 1024))k" "$size" loadgen smtp-source \
            "loadgen msg/s / smtp-source msg/s, both against smtp-sink, $size-byte messages, one per connection" \
            "loadgen_seconds $sink $size" "source_seconds $sink $size"
    done
    measure_pair "$dir" "$i" server 10240 smtp-server smtp-sink \
        "smtp-server msg/s / smtp-sink msg/s, both driven by smtp-source, 10240-byte messages, one per connection" \
        "source_seconds $server 10240" "source_seconds $sink 10240"
    num=$(loadgen_sustained_rate "$sink")
    value=$(ratio_of "$num" "$SUSTAINED_RATE")
    write_ratio "$dir/sustained/run-$i.json" sustained \
        "achieved / target msg/s, loadgen --mode sustained against smtp-sink, 1024-byte messages, one per connection" \
        "$value" 1024 "" \
        "{\"numerator\": {\"tool\": \"loadgen\", \"messages_per_second\": $num}, \"target_rate\": $SUSTAINED_RATE, \"duration_seconds\": $SUSTAINED_SECONDS}"
    printf '  %-12s %9.1f / %9s = %s\n' sustained "$num" "$SUSTAINED_RATE" "$value" >&2
}

measure() {
    [[ $# -eq 1 ]] || usage
    local dir sink server sink_port server_port i name started=$SECONDS
    dir=$(from_caller "$1")
    if ! [[ $GATE_REPEATS =~ ^[0-9]+$ ]] || ((GATE_REPEATS < 1)); then
        die "PERF_GATE_REPEATS=$GATE_REPEATS: a count of at least 1"
    fi
    need smtp-source "apt-get install postfix"
    need smtp-sink "apt-get install postfix"
    need python3 "to time runs and write result files"
    build
    apply_handicap
    # One thread of work each side, like smtp-source and smtp-sink (see the top).
    SERVER_WRAP+=(env TOKIO_WORKER_THREADS=1)
    for name in "${RATIOS[@]}"; do
        mkdir -p "$dir/$name"
        rm -f "$dir/$name"/run-*.json
    done
    sink_port=$(free_port)
    sink=$(start_smtp_sink "$sink_port"); PIDS+=("$sink")
    server_port=$(free_port)
    server=$(start_smtp_server "$server_port"); PIDS+=("$server")
    wait_port "$sink_port"
    wait_port "$server_port"
    for i in $(seq 1 "$GATE_REPEATS"); do
        echo "perf-gate: repeat $i of $GATE_REPEATS" >&2
        measure_repeat "$dir" "$i" "$sink_port" "$server_port"
    done
    stop "$server"
    stop "$sink"
    echo "perf-gate: $GATE_REPEATS repeats of ${#RATIOS[@]} ratios in $((SECONDS - started)) s, in $dir" >&2
}

# The markdown table of every ratio's comparison, from analyze compare's JSON.
render_table() {
    python3 - "$@" <<'EOF'
import json, sys
threshold, files = sys.argv[1], sys.argv[2:]
print(f"### Performance gate: ratios against Postfix's tools\n")
print("Each ratio is measured in one run, both sides back to back, so the machine's speed "
      "cancels out. A drop fails the gate only when it is significant (Mann-Whitney U, "
      f"p < 0.05) and larger than {threshold}.\n")
print("| ratio | base median (min..max) | new median (min..max) | change | p | verdict |")
print("| --- | --- | --- | --- | --- | --- |")
notes = []
for path in files:
    c = json.load(open(path))
    ratio = path.rsplit("/", 1)[-1].removesuffix(".json")
    row = next(r for r in c["rows"] if r["figure"] == "messages_per_second")
    side = lambda s: f"{s['median']:.3f} ({s['min']:.3f}..{s['max']:.3f}), {s['runs']} runs"
    change = "n/a" if row["relative_percent"] is None else f"{row['relative_percent']:+.1f}%"
    p = "-" if row["test"] is None else (
        "<0.001" if row["test"]["p_value"] < 0.001 else f"{row['test']['p_value']:.3f}")
    verdict = row["verdict"].replace("_", " ")
    others = [r["figure"] for r in c["rows"] if r["verdict"] == "regression" and r is not row]
    if verdict == "regression":
        verdict = "**REGRESSION**"
    print(f"| {ratio} | {side(row['base'])} | {side(row['new'])} | {change} | {p} | {verdict} |")
    notes += [f"{ratio}: {n}" for n in c["notes"] + c["warnings"]]
    notes += [f"{ratio}: {f} regressed as well" for f in others]
print()
for n in notes:
    print(f"> {n}\n")
EOF
}

compare() {
    local base new threshold=$DEFAULT_THRESHOLD name rc status=0 work tables=()
    [[ $# -ge 2 ]] || usage
    base=$(from_caller "$1"); new=$(from_caller "$2"); shift 2
    while (($#)); do
        case $1 in
            --threshold) [[ $# -ge 2 ]] || die "--threshold needs a value like 15%"; threshold=$2; shift 2 ;;
            --threshold=*) threshold=${1#*=}; shift ;;
            *) die "compare: unknown argument $1 (expected --threshold X%)" ;;
        esac
    done
    [[ -x "$BIN/analyze" ]] || die "$BIN/analyze not found (cargo build --release -p analyze)"
    need jq "to check the baseline"
    work="$OUT/compare"
    mkdir -p "$work"
    for name in "${RATIOS[@]}"; do
        local base_runs=("$base/$name"/run-*.json) new_runs=("$new/$name"/run-*.json)
        [[ -e ${base_runs[0]} ]] || die "no baseline runs in $base/$name"
        [[ -e ${new_runs[0]} ]] || die "no new runs in $new/$name"
        if jq -e -s 'any(.run.config.handicap != null)' "${base_runs[@]}" >/dev/null; then
            die "$base/$name holds runs measured with PERF_GATE_HANDICAP; measure the baseline without it"
        fi
        rc=0
        "$BIN/analyze" compare --base "${base_runs[@]}" --new "${new_runs[@]}" \
            --threshold "$threshold" --format json >"$work/$name.json" || rc=$?
        case $rc in
            0) ;;
            1) status=1 ;;
            *) die "analyze compare failed for $name (exit $rc)" ;;
        esac
        tables+=("$work/$name.json")
    done
    render_table "$threshold" "${tables[@]}" >"$work/table.md"
    cat "$work/table.md"
    if [[ -n ${GITHUB_STEP_SUMMARY:-} ]]; then
        cat "$work/table.md" >>"$GITHUB_STEP_SUMMARY"
    fi
    if ((status)); then
        echo "perf-gate: a ratio dropped significantly and by more than $threshold" >&2
    fi
    return "$status"
}

gate() {
    [[ $# -ge 2 ]] || usage
    local base=$1 dir=$2 rc
    shift 2
    measure "$dir"
    # In a subshell with errexit on, so a failure inside compare still stops it (a
    # function called from an `||` list would run with errexit off).
    rc=0
    (set -e; compare "$base" "$dir" "$@") || rc=$?
    ((rc == 1)) || return "$rc"
    echo "perf-gate: a regression on the first measurement; measuring again to confirm it" >&2
    measure "$dir/confirm"
    compare "$base" "$dir/confirm" "$@"
}

case "${1:-}" in
    measure) shift; measure "$@" ;;
    compare) shift; compare "$@" ;;
    gate) shift; gate "$@" ;;
    *) usage ;;
esac
