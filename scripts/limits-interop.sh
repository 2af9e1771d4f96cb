#!/usr/bin/env bash
# `loadgen limits` against servers nobody here wrote (issue 12). Not part of CI.
#
#   smtp-sink   Postfix's test sink: no limits at all
#   aiosmtpd    Python's asyncio SMTP server (pip install into a venv when missing):
#               no limits either
#   postfix     a throwaway Postfix smtpd whose anvil service enforces
#               smtpd_client_connection_count_limit = 5 and
#               smtpd_client_connection_rate_limit = 10 per anvil_rate_time_unit = 10s
#               (refusals as 421 4.7.0), with smtpd_timeout = 5s,
#               message_size_limit = 1 MiB and smtpd_recipient_limit = 10
#
# The two servers without limits are run with the expectations of the limits
# profile (docker/stress-test-limits.toml): every case that runs must fail, each
# with its reason, and the suite must finish (exit 1), not hang or crash. Postfix is
# run with its own numbers: its per-IP cases (and idle timeout, size, recipients)
# must pass (exit 0); it has no global limits and no session timeout, so those
# cases are skipped.
#
# Everything listens on 127.0.0.1 on free ports; Postfix runs as its own instance
# (config, queue and data directories in a temporary directory, never port 25, the
# system's instance untouched) and is stopped on every exit path, the other servers
# by their PIDs. Each suite's document goes to results/<stamp>-limits-<server>.json.
#
# Exit 0: all three behaved as described; 1: one did not; 0 with "SKIP:" for a
# server whose software is missing (postfix/smtp-sink: apt-get install postfix;
# root is needed to start Postfix). LIMITS_BIN: the directory of the loadgen
# binary (default target/release, built when missing); LIMITS_AIOSMTPD_VENV: the
# venv (default results/.stampede/aiosmtpd-venv); LIMITS_KEEP=1 keeps the
# temporary directory (Postfix's log).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/interop.sh
source "$ROOT/scripts/lib/interop.sh"
BIN="${LIMITS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
VENV="${LIMITS_AIOSMTPD_VENV:-$ROOT/results/.stampede/aiosmtpd-venv}"
START_TIMEOUT_S=20
# Postfix's own limits (main.cf below) and the expectations that match them.
PF_COUNT_LIMIT=5
PF_RATE_LIMIT=10
PF_RATE_UNIT_S=10
PF_TIMEOUT_S=5
PF_SIZE_LIMIT=1048576
PF_RCPT_LIMIT=10
# The limits profile's numbers (docker/stress-test-limits.toml), expected of the
# servers that have no limits.
PROFILE_EXPECTATIONS=(--expect-max-connections 20 --expect-max-connections-per-ip 5
    --expect-rate 30/10s --expect-rate-per-ip 10/10s --expect-idle-timeout 5s
    --expect-session-timeout 15s --expect-max-message-size 1MiB --expect-max-recipients 10)

WORK=""
PIDS=()            # servers this script started (smtp-sink, aiosmtpd)
FAILED=0
STAMP="$(date -u +%Y%m%d-%H%M%S)"

pass() { printf 'PASS: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; FAILED=1; }
skip() { printf 'SKIP: %s\n' "$*"; }

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
(($# == 0)) || { echo "usage: scripts/limits-interop.sh (no arguments; see --help)" >&2; exit 2; }

cleanup() {
    local status=$? pid
    ((status != 0 || FAILED == 0)) || status=1
    postfix_instance_stop
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    remove_unless_kept "$WORK" LIMITS_KEEP
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until 127.0.0.1:$1 greets with 220; $2 names the server.
greets() {
    wait_for_banner "$1" "$START_TIMEOUT_S" && return 0
    fail "$2 does not greet on 127.0.0.1:$1 within ${START_TIMEOUT_S} s"
    return 1
}

# Runs the suite: $1 the server's name, $2 its port, $3 the exit status wanted, then
# loadgen limits flags. Prints the table; checks the status and, for a wanted 1,
# that no case that ran passed.
suite() {
    local name=$1 port=$2 want=$3 doc status=0
    shift 3
    doc="results/$STAMP-limits-$name.json"
    echo
    echo "== loadgen limits against $name (127.0.0.1:$port)"
    echo "   loadgen limits --server 127.0.0.1:$port $* -o $doc"
    "$BIN/loadgen" limits --server "127.0.0.1:$port" -o "$doc" "$@" || status=$?
    if [[ ! -f "$doc" ]]; then
        fail "$name: the suite wrote no document (exit $status)"
        return 0
    fi
    if ((status != want)); then
        fail "$name: loadgen limits exited $status, wanted $want"
        return 0
    fi
    if ((want == 1)); then
        python3 - "$doc" <<'EOF' || { fail "$name: a case passed against a server without limits"; return 0; }
import json, sys
doc = json.load(open(sys.argv[1]))
ran = [c for c in doc["cases"] if c["verdict"] != "skip"]
passed = [c["case"] for c in ran if c["verdict"] == "pass"]
unexplained = [c["case"] for c in ran if c["verdict"] == "fail" and not c.get("reason")]
if passed or unexplained:
    print("  passed: %s, failed without a reason: %s" % (passed, unexplained), file=sys.stderr)
    sys.exit(1)
EOF
        pass "$name: every case that ran failed, each with its reason (exit 1)"
    else
        pass "$name: every case that ran passed (exit 0)"
    fi
}

run_smtp_sink() {
    command -v smtp-sink >/dev/null 2>&1 || { skip "smtp-sink: not installed (Debian: apt-get install postfix)"; return 0; }
    local port user=()
    port="$(free_port)"
    # smtp-sink refuses to keep root's privileges.
    ((EUID != 0)) || user=(-u nobody)
    smtp-sink "${user[@]}" "127.0.0.1:$port" 1024 >"$WORK/smtp-sink.log" 2>&1 </dev/null &
    PIDS+=($!)
    greets "$port" smtp-sink || return 0
    suite smtp-sink "$port" 1 "${PROFILE_EXPECTATIONS[@]}"
}

ensure_aiosmtpd() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null && return 0
    echo "==> python3 -m venv $VENV && pip install aiosmtpd"
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q aiosmtpd
}

run_aiosmtpd() {
    ensure_aiosmtpd || { skip "aiosmtpd: cannot be installed into $VENV"; return 0; }
    local port
    port="$(free_port)"
    "$VENV/bin/python" -m aiosmtpd -n -c aiosmtpd.handlers.Sink -l "127.0.0.1:$port" \
        >"$WORK/aiosmtpd.log" 2>&1 </dev/null &
    PIDS+=($!)
    greets "$port" aiosmtpd || return 0
    suite aiosmtpd "$port" 1 "${PROFILE_EXPECTATIONS[@]}"
}

# The Postfix instance's own main.cf lines: its limits, and nothing leaves.
postfix_main_cf() {
    cat <<EOF
# Nothing leaves: accepted mail is discarded.
default_transport = discard:limits suite
local_transport = discard:limits suite
relay_transport = discard:limits suite
# The limits under test. anvil counts per client address; by default clients in
# mynetworks are exempt, which would exempt every loopback address.
smtpd_client_event_limit_exceptions =
smtpd_client_connection_count_limit = $PF_COUNT_LIMIT
smtpd_client_connection_rate_limit = $PF_RATE_LIMIT
anvil_rate_time_unit = ${PF_RATE_UNIT_S}s
smtpd_timeout = ${PF_TIMEOUT_S}s
message_size_limit = $PF_SIZE_LIMIT
smtpd_recipient_limit = $PF_RCPT_LIMIT
EOF
}

run_postfix() {
    command -v postfix >/dev/null 2>&1 || { skip "postfix: not installed (Debian: apt-get install postfix)"; return 0; }
    ((EUID == 0)) || { skip "postfix: starting an instance needs root"; return 0; }
    local dir=$WORK/postfix
    PF_PORT="$(free_port)"
    postfix_instance_write "$dir" limits "$PF_PORT" "$(postfix_main_cf)"
    postfix_instance_start "$dir" || { fail "$POSTFIX_INSTANCE_ERROR"; return 0; }
    greets "$PF_PORT" postfix || return 0
    # The banner check spent one connection of 127.0.0.1's rate; the suite's
    # sources are 127.0.0.2 and up.
    suite postfix "$PF_PORT" 0 \
        --expect-max-connections-per-ip "$PF_COUNT_LIMIT" \
        --expect-rate-per-ip "$PF_RATE_LIMIT/${PF_RATE_UNIT_S}s" \
        --expect-idle-timeout "${PF_TIMEOUT_S}s" \
        --expect-max-message-size "$PF_SIZE_LIMIT" \
        --expect-max-recipients "$PF_RCPT_LIMIT"
    if ((FAILED == 1)) && [[ -f "$dir/maillog" ]]; then
        echo "--- last lines of Postfix's log:" >&2
        tail -n 15 "$dir/maillog" >&2 || true
    fi
}

main() {
    command -v python3 >/dev/null 2>&1 || { echo "python3 is needed" >&2; exit 1; }
    if [[ ! -x "$BIN/loadgen" ]]; then
        echo "==> cargo build --release -p loadgen"
        cargo build --release -p loadgen
    fi
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/stampede-limits-interop.XXXXXX")"
    chmod 755 "$WORK"
    mkdir -p results
    # One after another: the timeout cases are judged to ±10%, which a busy
    # machine would blur.
    run_smtp_sink
    run_aiosmtpd
    run_postfix
    echo
    ((FAILED == 0)) && echo "limits-interop: all as expected" || echo "limits-interop: see FAIL lines above" >&2
}

main
