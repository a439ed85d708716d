#!/usr/bin/env bash
# Runs Debian's containerd with everything private to DIR, next to (not
# instead of) a system containerd: root DIR/root, state DIR/state, sockets
# DIR/containerd.sock (gRPC) and DIR/containerd.sock.ttrpc, log
# DIR/containerd.log. The CRI plugin and the snapshotters this host cannot
# use are disabled so it starts in well under a second.
#
#   scripts/private-containerd.sh start|stop|status DIR
#
# `ctr -a DIR/containerd.sock run --runtime io.containerd.hull.v2 ...` needs
# containerd-shim-hull-v2 on containerd's PATH: /usr/local/bin is added to the
# caller's PATH, so put a build directory in front of it to test a build.
# containerd passes its environment to shims, so HULL_CONFIG set by the caller
# reaches the Hull shim.
#
# stop deletes every task and container, stops containerd, kills any shim,
# QEMU or virtiofsd that still names DIR, and unmounts everything under DIR.
# It is idempotent.
set -euo pipefail

usage() { echo "usage: private-containerd.sh start|stop|status DIR" >&2; exit 2; }
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || usage
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sock=$dir/containerd.sock
pidfile=$dir/containerd.pid
log=$dir/containerd.log

case ":$PATH:" in *:/usr/local/bin:*) ;; *) PATH=$PATH:/usr/local/bin ;; esac
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin:/sbin ;; esac
export PATH

running() {
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answering() {
    timeout 5 ctr -a "$sock" version >/dev/null 2>&1
}

write_config() {
    cat > "$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
EOF
}

start() {
    if running && answering; then
        echo "containerd: already running (pid $(cat "$pidfile")), socket $sock"
        return 0
    fi
    write_config
    mkdir -p "$dir/root" "$dir/state"
    # setsid: a terminal's Ctrl-C must not reach the daemon and its shims.
    setsid containerd --config "$dir/config.toml" >>"$log" 2>&1 </dev/null &
    echo $! > "$pidfile"
    for _ in $(seq 1 100); do
        if answering; then
            echo "containerd: running (pid $(cat "$pidfile")), socket $sock, log $log"
            return 0
        fi
        if ! running; then
            echo "containerd: exited while starting; last lines of $log:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "containerd: not answering on $sock after 10s; see $log" >&2
    return 1
}

# Pids of shims, VMMs and virtiofsd whose command line names DIR.
leftover_pids() {
    local p comm
    for p in /proc/[0-9]*; do
        comm=$(cat "$p/comm" 2>/dev/null) || continue
        case $comm in
            containerd-shim*|qemu-system-*|virtiofsd|containerd) ;;
            *) continue ;;
        esac
        if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -qF -- "$dir"; then
            echo "${p#/proc/}"
        fi
    done
}

remove_everything() {
    local ns id
    for ns in $(ctr -a "$sock" namespaces ls -q 2>/dev/null); do
        for id in $(ctr -a "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
            timeout 20 ctr -a "$sock" -n "$ns" tasks delete --force "$id" >/dev/null 2>&1 || true
        done
        for id in $(ctr -a "$sock" -n "$ns" containers ls -q 2>/dev/null); do
            timeout 20 ctr -a "$sock" -n "$ns" containers rm "$id" >/dev/null 2>&1 || true
        done
    done
}

stop() {
    if running && answering; then
        remove_everything
    fi
    if running; then
        local pid
        pid=$(cat "$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    local pids
    pids=$(leftover_pids)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.2
    fi
    # Deepest first, so nested mounts come off before their parents.
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
        | sort -r | while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done
    echo "containerd: stopped ($dir)"
}

status() {
    if running && answering; then
        echo "containerd: running (pid $(cat "$pidfile")), socket $sock"
    else
        echo "containerd: not running ($dir)"
        return 1
    fi
}

case $cmd in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
