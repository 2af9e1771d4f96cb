#!/usr/bin/env bash
# Interop check against a mail server nobody here wrote: loadgen drives a throwaway
# Postfix instance (Debian's `postfix` package) that relays to a local smtp-server.
#
#   loadgen ──SMTP / STARTTLS──▶ Postfix smtpd ──relay, STARTTLS──▶ smtp-server
#            (Postfix's snakeoil        (relayhost = [127.0.0.1]:PORT,
#             certificate, TLS may)      smtp_tls_security_level = encrypt)
#
# Runs, each of INTEROP_MESSAGES (default 200) 1 KiB messages over 10 sessions:
#   plaintext         no TLS: the baseline
#   starttls          --tls starttls --tls-insecure (the snakeoil certificate is
#                     self-signed): 100% success, the `tls` phase and the result's
#                     `tls` key recorded
#   certificate       --tls starttls with certificate checking on (5 messages): every
#                     message fails as tls:certificate, none goes out in plaintext
# then waits until smtp-server has accepted every relayed message (its
# /api/stats messages_accepted) and that Postfix's client negotiated TLS with it.
#
# The instance is Postfix's own processes with their own config_directory,
# queue_directory and data_directory under a temporary directory; it listens on
# 127.0.0.1 and a free port only, never on port 25, and the system's default instance
# (if any) is neither read nor touched. Whatever happens, the instance is stopped and
# the server this script started is ended by its PID, and the temporary directory is
# removed (INTEROP_KEEP=1 keeps it, with Postfix's log, for a look).
#
# Exit 0: pass; 1: fail; 0 with a "SKIP:" line when Postfix is not installed, the
# snakeoil certificate is missing, or this is not run as root (`postfix start` needs
# root); STAMPEDE_REQUIRE_POSTFIX=1 turns a skip into a failure (exit 1); 2: bad usage.
# Needs release binaries (built here when missing) and python3.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/interop.sh
source "$ROOT/scripts/lib/interop.sh"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
MESSAGES="${INTEROP_MESSAGES:-200}"
SNAKEOIL_CERT=/etc/ssl/certs/ssl-cert-snakeoil.pem
SNAKEOIL_KEY=/etc/ssl/private/ssl-cert-snakeoil.key
# Bounds of the waits below.
START_TIMEOUT_S=20
RELAY_TIMEOUT_S=60

WORK=""            # the temporary directory: the Postfix instance's, logs, results
SERVER_PID=""      # the smtp-server this script started
FAILED=0

pass() { printf 'PASS: %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    FAILED=1
}
# A failure after which nothing else can be checked.
abort() {
    fail "$*"
    exit 1
}
skip() {
    if [[ "${STAMPEDE_REQUIRE_POSTFIX:-0}" == 1 ]]; then
        printf 'FAIL: %s (STAMPEDE_REQUIRE_POSTFIX=1)\n' "$*" >&2
        exit 1
    fi
    printf 'SKIP: interop-postfix: %s\n' "$*"
    exit 0
}

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
(($# == 0)) || { echo "usage: scripts/interop-postfix.sh (no arguments; see --help)" >&2; exit 2; }
[[ "$MESSAGES" =~ ^[1-9][0-9]{0,5}$ ]] ||
    { echo "INTEROP_MESSAGES '$MESSAGES': expected a whole number from 1 to 999999" >&2; exit 2; }

# ---------------------------------------------------------------------------------
# Prerequisites: a skip names what is missing.

check_prerequisites() {
    if ! command -v postfix >/dev/null 2>&1 || ! command -v postconf >/dev/null 2>&1; then
        skip "postfix is not installed (Debian: apt-get install postfix)"
    fi
    ((EUID == 0)) || skip "postfix start needs root (run as root, e.g. in CI)"
    [[ -r "$SNAKEOIL_CERT" && -r "$SNAKEOIL_KEY" ]] ||
        skip "the snakeoil certificate ($SNAKEOIL_CERT, $SNAKEOIL_KEY) is missing (Debian: apt-get install ssl-cert)"
    command -v python3 >/dev/null 2>&1 || abort "python3 is needed to read the results"
    if [[ ! -x "$BIN/smtp-server" || ! -x "$BIN/loadgen" ]]; then
        echo "==> cargo build --release -p server -p loadgen"
        cargo build --release -p server -p loadgen
    fi
}

# ---------------------------------------------------------------------------------
# Cleanup: on every exit path, only what this script started.

cleanup() {
    local status=$?
    ((status != 0 || FAILED == 0)) || status=1
    postfix_instance_stop
    if [[ -n "$SERVER_PID" ]]; then
        stop_pid "$SERVER_PID"
    fi
    if ((status != 0)) && [[ -n "$WORK" && -f "$WORK/maillog" ]]; then
        echo "--- last lines of Postfix's log ($WORK/maillog):" >&2
        tail -n 25 "$WORK/maillog" >&2 || true
    fi
    remove_unless_kept "$WORK" INTEROP_KEEP
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------
# The relay target: smtp-server on a free port, STARTTLS with a generated certificate.

# Prints the value of `key=` from the server's start-up line, waiting for it.
server_log_value() {
    local key=$1 value="" deadline=$((SECONDS + START_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        value="$(grep -o "$key=[0-9.:]*" "$WORK/smtp-server.log" 2>/dev/null | head -n 1 | cut -d= -f2)"
        [[ -z "$value" ]] || break
        running "$SERVER_PID" || break
        sleep 0.1
    done
    [[ -n "$value" ]] || abort "smtp-server logged no $key within ${START_TIMEOUT_S} s: $(tail -n 5 "$WORK/smtp-server.log")"
    echo "$value"
}

start_smtp_server() {
    "$BIN/smtp-server" --config docker/stress-test.toml --bind 127.0.0.1 --port 0 \
        --admin-port auto --admin-addr-file "$WORK/admin.addr" --domain relay-target.stampede.test \
        --tls-self-signed >"$WORK/smtp-server.log" 2>&1 </dev/null &
    SERVER_PID=$!
    SERVER_ADDR="$(server_log_value smtp_addr)"
    ADMIN_ADDR="$(server_log_value admin_addr)"
    echo "smtp-server (pid $SERVER_PID): SMTP $SERVER_ADDR, admin $ADMIN_ADDR"
}

# /api/stats of the relay target, as JSON.
server_stats() {
    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen("http://%s/api/stats" % sys.argv[1], timeout=5).read().decode())' "$ADMIN_ADDR"
}

# ---------------------------------------------------------------------------------
# The Postfix instance.

# The Postfix instance's own main.cf lines: relay everything to smtp-server.
postfix_main_cf() {
    cat <<EOF
# Nothing is delivered locally, everything goes to the relay target.
local_transport = error:local delivery is disabled in this instance
relayhost = [127.0.0.1]:$RELAY_PORT
# The inbound side, as the issue asks: Debian's snakeoil certificate, TLS offered.
smtpd_tls_cert_file = $SNAKEOIL_CERT
smtpd_tls_key_file = $SNAKEOIL_KEY
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
# The outbound side: Postfix's (OpenSSL) client must get TLS from smtp-server (rustls).
smtp_tls_security_level = encrypt
smtp_tls_loglevel = 1
EOF
}

start_postfix() {
    POSTFIX_PORT="$(free_port)"
    RELAY_PORT="${SERVER_ADDR##*:}"
    postfix_instance_write "$WORK" interop "$POSTFIX_PORT" "$(postfix_main_cf)"
    postfix_instance_start "$WORK" || abort "$POSTFIX_INSTANCE_ERROR"
    wait_for_banner "$POSTFIX_PORT" "$START_TIMEOUT_S" ||
        abort "Postfix does not greet on 127.0.0.1:$POSTFIX_PORT within ${START_TIMEOUT_S} s"
    echo "Postfix $(postconf -dh mail_version) (instance $WORK/conf): 127.0.0.1:$POSTFIX_PORT, relayhost [127.0.0.1]:$RELAY_PORT"
}

# ---------------------------------------------------------------------------------
# The runs.

STAMP="$(date -u +%Y%m%d-%H%M%S)"
RESULTS=()

# Runs loadgen against Postfix: $1 the run's name, the rest loadgen flags.
run_loadgen() {
    local name=$1 out status=0
    shift
    out="results/$STAMP-interop-postfix-$name.json"
    echo "==> loadgen $* ($name)"
    "$BIN/loadgen" --servers "127.0.0.1:$POSTFIX_PORT" --mode burst --workers 10 --size small \
        --quiet --test-type "interop-postfix-$name" --output "$out" "$@" || status=$?
    ((status == 0)) || abort "loadgen ($name) exited $status"
    [[ -f "$out" ]] || abort "loadgen ($name) wrote no result"
    RESULTS+=("$out")
    LAST_RESULT=$out
}

# Checks a result with a python expression per requirement; $1 file, $2 name, then
# lines of `python-condition|message`.
check_result() {
    local file=$1 name=$2
    shift 2
    if python3 - "$file" "$@" <<'EOF'; then
import json, sys
r = json.load(open(sys.argv[1]))
m = r["metrics"]
tls = r.get("tls") or {}
phases = m.get("phases_ms") or {}
errors = m.get("error_breakdown") or {}
bad = []
for rule in sys.argv[2:]:
    cond, _, message = rule.partition("|")
    if not eval(cond):
        bad.append(message)
for b in bad:
    print("  " + b, file=sys.stderr)
print("  ok %d, failed %d %s, tls %s" % (m["successful_messages"], m["failed_messages"],
      json.dumps(errors), json.dumps(tls)))
sys.exit(1 if bad else 0)
EOF
        pass "$name"
    else
        fail "$name: $file"
    fi
}

# Waits until smtp-server has accepted $1 messages.
wait_relayed() {
    local want=$1 got=0 deadline=$((SECONDS + RELAY_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        got="$(server_stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["messages_accepted"])')" ||
            abort "smtp-server's /api/stats ($ADMIN_ADDR) does not answer"
        ((got < want)) || break
        sleep 0.5
    done
    if ((got == want)); then
        pass "smtp-server accepted all $want messages Postfix relayed"
    else
        fail "smtp-server accepted $got of the $want messages after ${RELAY_TIMEOUT_S} s (the rest are in Postfix's queue or bounced)"
    fi
}

# Postfix's client (OpenSSL) negotiated TLS with smtp-server (rustls): the server's
# handshake counters.
check_relay_tls() {
    if server_stats | python3 -c '
import json, sys
tls = json.load(sys.stdin).get("tls") or {}
hs, versions = tls.get("handshakes") or {}, tls.get("versions") or {}
print("  smtp-server tls: handshakes %s, versions %s" % (json.dumps(hs), json.dumps(versions)))
sys.exit(0 if hs.get("ok", 0) > 0 and hs.get("failed", 0) == 0 and hs.get("timeout", 0) == 0 else 1)
'; then
        pass "Postfix relayed to smtp-server over STARTTLS (OpenSSL client, rustls server)"
    else
        fail "Postfix did not relay to smtp-server over TLS, or a handshake failed"
    fi
}

summary() {
    echo
    echo "== interop-postfix: loadgen -> Postfix $(postconf -dh mail_version) -> smtp-server"
    python3 - "${RESULTS[@]}" <<'EOF'
import json, sys
print("%-34s %6s %6s %8s %10s %10s  %s" % ("run", "ok", "failed", "msg/s", "tls p50 ms", "tls p99 ms", "tls"))
for path in sys.argv[1:]:
    r = json.load(open(path))
    m = r["metrics"]
    t = (m.get("phases_ms") or {}).get("tls") or {}
    tls = r.get("tls") or {}
    what = ", ".join(["%s %d" % kv for kv in (tls.get("versions") or {}).items()]
                     + ["%s %d" % kv for kv in (tls.get("cipher_suites") or {}).items()])
    if tls.get("handshakes"):
        what += ", resumed %s/%s" % (tls.get("resumed"), tls.get("handshakes"))
    fmt = lambda v: "%.3f" % v if isinstance(v, (int, float)) and v > 0 else "-"
    print("%-34s %6d %6d %8.0f %10s %10s  %s" % (r["run"]["name"], m["successful_messages"],
          m["failed_messages"], m["messages_per_second"], fmt(t.get("p50")), fmt(t.get("p99")),
          what or "-"))
EOF
    echo "results: ${RESULTS[*]}"
}

main() {
    check_prerequisites
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/stampede-interop-postfix.XXXXXX")"
    # Postfix's processes (user postfix) must reach the queue below it.
    chmod 755 "$WORK"
    mkdir -p results
    start_smtp_server
    start_postfix

    run_loadgen plaintext --messages "$MESSAGES"
    check_result "$LAST_RESULT" "plaintext through Postfix: $MESSAGES of $MESSAGES" \
        "m['successful_messages'] == $MESSAGES and m['failed_messages'] == 0|want $MESSAGES successful, none failed" \
        "(phases.get('tls') or {}).get('max', 0) == 0|a plaintext run timed a tls phase"

    run_loadgen starttls --messages "$MESSAGES" --tls starttls --tls-insecure
    check_result "$LAST_RESULT" "STARTTLS through Postfix (snakeoil, --tls-insecure): $MESSAGES of $MESSAGES, tls phase and result key" \
        "m['successful_messages'] == $MESSAGES and m['failed_messages'] == 0|want $MESSAGES successful, none failed" \
        "(phases.get('tls') or {}).get('p50', 0) > 0|no tls phase timed in metrics.phases_ms" \
        "tls.get('mode') == 'starttls' and tls.get('handshakes', 0) > 0|the result's tls key lacks mode starttls or handshakes" \
        "sum((tls.get('versions') or {}).values()) == tls.get('handshakes')|tls.versions do not add up to the handshakes"

    run_loadgen certificate --messages 5 --tls starttls
    check_result "$LAST_RESULT" "STARTTLS with certificate checking on: the self-signed snakeoil certificate fails as tls:certificate" \
        "m['successful_messages'] == 0 and errors.get('tls:certificate') == 5|want all 5 failed as tls:certificate"

    wait_relayed $((2 * MESSAGES))
    check_relay_tls
    summary
    ((FAILED == 0)) || exit 1
    echo "interop-postfix: PASS"
}

main "$@"
