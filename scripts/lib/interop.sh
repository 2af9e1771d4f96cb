# shellcheck shell=bash
# Shared by scripts/interop-postfix.sh and scripts/limits-interop.sh (sourced, not
# run): processes stopped by PID, free loopback ports, waiting for a banner, a
# throwaway Postfix instance, and removing the temporary directory on exit.
#
# The instance lives in one directory the caller owns: conf/ (main.cf, master.cf),
# queue/, data/, maillog (Postfix's log, via postlogd) and postfix-command.log (the
# output of `postfix check/start/stop`). It listens on 127.0.0.1 and the port it is
# given only, never on port 25, and the system's default instance is neither read nor
# touched.

# The instance `postfix_instance_start` started, for `postfix_instance_stop`.
POSTFIX_INSTANCE_DIR=""
# Why `postfix_instance_start` failed.
POSTFIX_INSTANCE_ERROR=""

# True when process $1 runs (a zombie has exited).
running() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        running "$pid" || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# True once 127.0.0.1:$1 greets with 220, false when it has not within $2 seconds.
wait_for_banner() {
    local port=$1 deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        python3 - "$port" <<'EOF' 2>/dev/null && return 0
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2)
s.settimeout(5)
ok = s.recv(512).startswith(b"220")
s.sendall(b"QUIT\r\n")
s.close()
sys.exit(0 if ok else 1)
EOF
        sleep 0.2
    done
    return 1
}

# Writes the configuration of an instance in directory $1 whose smtpd listens on
# 127.0.0.1:$3; $2 names it (syslog_name stampede-$2, myhostname
# postfix-$2.stampede.test); $4: main.cf lines of the caller's own (transports,
# TLS, limits), appended to the common ones. Nothing is delivered locally.
postfix_instance_write() {
    local dir=$1 name=$2 port=$3 extra=$4
    mkdir -p "$dir/conf" "$dir/queue" "$dir/data"
    # The master process locks files in data_directory as the mail owner.
    chown "$(postconf -dh mail_owner)" "$dir/data"
    chmod 700 "$dir/data"
    cat >"$dir/conf/main.cf" <<EOF
# A throwaway instance for scripts/$(basename "$0"); removed when it ends.
compatibility_level = 3.6
config_directory = $dir/conf
queue_directory = $dir/queue
data_directory = $dir/data
# No syslog needed: the instance logs to a file of its own (postlogd).
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
syslog_name = stampede-$name
myhostname = postfix-$name.stampede.test
# Loopback only.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_dns_support_level = disabled
$extra
EOF
    # Debian's services without chroot (a chroot would need its own copies of
    # /etc/services and friends) and with the one smtpd on the loopback port.
    # Services nobody uses (tlsmgr, smtp when nothing is relayed) are not started.
    cat >"$dir/conf/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
EOF
}

# `postfix check`, then `postfix start`, of the instance in $1. On failure sets
# POSTFIX_INSTANCE_ERROR (which of the two failed, and Postfix's output) and returns
# 1. Once `start` has run (even when it failed), `postfix_instance_stop` stops the
# instance.
postfix_instance_start() {
    local dir=$1 step
    for step in check start; do
        [[ "$step" != start ]] || POSTFIX_INSTANCE_DIR=$dir
        if ! postfix -c "$dir/conf" "$step" >>"$dir/postfix-command.log" 2>&1; then
            # shellcheck disable=SC2034 # read by the sourcing script
            POSTFIX_INSTANCE_ERROR="postfix -c $dir/conf $step failed: $(cat "$dir/postfix-command.log")"
            return 1
        fi
    done
}

# Stops the instance `postfix_instance_start` started, if any: `postfix -c DIR stop`,
# then its master process (from the instance's own pid file) by PID if it is still
# there.
postfix_instance_stop() {
    local dir=$POSTFIX_INSTANCE_DIR master_pid
    [[ -n "$dir" ]] || return 0
    master_pid="$(tr -dc '0-9' <"$dir/queue/pid/master.pid" 2>/dev/null || true)"
    postfix -c "$dir/conf" stop >>"$dir/postfix-command.log" 2>&1 || true
    [[ -z "$master_pid" ]] || stop_pid "$master_pid"
    POSTFIX_INSTANCE_DIR=""
}

# Removes the temporary directory $1 (when set), unless the variable named $2 (the
# script's *_KEEP) is 1: then it says where the directory stays.
remove_unless_kept() {
    local dir=$1 keep=$2
    [[ -n "$dir" ]] || return 0
    if [[ "${!keep:-0}" == 1 ]]; then
        echo "kept $dir ($keep=1)" >&2
    else
        rm -rf "$dir"
    fi
}
