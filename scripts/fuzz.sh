#!/usr/bin/env bash
# Runs the cargo-fuzz targets of the server's input path (fuzz/), one after another.
# Not part of CI: needs nightly Rust; installs cargo-fuzz when it is missing.
#
#   scripts/fuzz.sh [--time DURATION] [TARGET...] [-- LIBFUZZER_FLAG...]
#
#   TARGET      command_line, data_reader, session (default: all three)
#   --time      how long each target runs: plain seconds or 30s, 10m, 1h30m
#               (default: 60s)
#   -- FLAGS    passed on to libFuzzer, e.g. -- -len_control=0 to try long inputs
#               from the start
#
# One libFuzzer process at a time (the default -jobs, so one core). The corpus grows
# in fuzz/corpus/TARGET (not committed) from the committed seeds in fuzz/seeds/TARGET;
# crashing inputs land in fuzz/artifacts/TARGET, the whole output in
# fuzz/artifacts/TARGET.log. Prints per target the time, executions, exec/s, crashes
# and corpus size; exits 1 when a target crashed, 2 on a usage error.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"
ALL=(command_line data_reader session)

die() { printf 'error: %s\n' "$*" >&2; exit 2; }

# Seconds from "90", "30s", "10m", "1h30m".
seconds() {
    local text=$1 total=0 rest=$1 n unit
    [[ $text =~ ^[0-9]+$ ]] && { echo "$text"; return; }
    [[ $text =~ ^([0-9]+[hms])+$ ]] || die "--time: '$text' is not a duration (plain seconds, or like 30s, 10m, 1h30m)"
    while [[ $rest =~ ^([0-9]+)([hms])(.*)$ ]]; do
        n=${BASH_REMATCH[1]} unit=${BASH_REMATCH[2]} rest=${BASH_REMATCH[3]}
        case $unit in h) total=$((total + n * 3600)) ;; m) total=$((total + n * 60)) ;; s) total=$((total + n)) ;; esac
    done
    echo "$total"
}

# Longest input per target: command lines are at most 512 octets; the others need
# room for lines over 1000 octets and messages past the 64 KiB input buffer.
max_len() {
    case $1 in command_line) echo 1024 ;; data_reader) echo 8192 ;; session) echo 32768 ;; esac
}

TIME=60
TARGETS=()
EXTRA=()
while (($#)); do
    case $1 in
        --time) [[ $# -ge 2 ]] || die "--time needs a value"; TIME=$(seconds "$2"); shift 2 ;;
        --time=*) TIME=$(seconds "${1#--time=}"); shift ;;
        -h|--help) sed -n "2,17p" "$ROOT/scripts/fuzz.sh" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [[ " ${ALL[*]} " == *" $1 "* ]] || die "unknown target '$1' (targets: ${ALL[*]})"
           TARGETS+=("$1"); shift ;;
    esac
done
((TIME > 0)) || die "--time must be more than 0 seconds"
((${#TARGETS[@]})) || TARGETS=("${ALL[@]}")

command -v rustup >/dev/null || die "rustup not found (nightly Rust is needed for cargo-fuzz)"
rustup run nightly rustc --version >/dev/null 2>&1 || die "no nightly toolchain: rustup toolchain install nightly"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (a few minutes)" >&2
    cargo +nightly install cargo-fuzz --locked
fi

status=0
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="artifacts/$target.log"
    before=$(find "artifacts/$target" -type f | wc -l)
    echo "== $target: ${TIME}s" >&2
    started=$(date +%s)
    # libFuzzer exits non-zero on a crash; the summary below reports it.
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$TIME" -max_len="$(max_len "$target")" -timeout=10 \
        -print_final_stats=1 "${EXTRA[@]}" 2>&1 | tee "$log" >&2 || true
    elapsed=$(($(date +%s) - started))
    after=$(find "artifacts/$target" -type f | wc -l)
    crashes=$((after - before))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "corpus/$target" -type f | wc -l)
    printf '%s: %ss, %s executions, %s exec/s, %s crashes, corpus %s files\n' \
        "$target" "$elapsed" "${execs:-?}" "${rate:-?}" "$crashes" "$corpus"
    ((crashes == 0)) || status=1
done
exit "$status"
