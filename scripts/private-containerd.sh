#!/usr/bin/env bash
# Runs Debian's containerd with everything private to DIR, next to (not
# instead of) a system containerd: root DIR/root, state DIR/state, sockets
# DIR/containerd.sock (gRPC) and DIR/containerd.sock.ttrpc, log
# DIR/containerd.log. The snapshotters this host cannot use are disabled,
# and so is the CRI plugin unless --cri asks for it, so it starts in well
# under a second.
#
#   scripts/private-containerd.sh start DIR [--cri]
#   scripts/private-containerd.sh stop|status DIR
#
# `ctr -a DIR/containerd.sock run --runtime io.containerd.hull.v2 ...` needs
# containerd-shim-hull-v2 on containerd's PATH: /usr/local/bin is added to the
# caller's PATH, so put a build directory in front of it to test a build.
# containerd passes its environment to shims, so HULL_CONFIG set by the caller
# reaches the Hull shim.
#
# --cri enables the CRI plugin (served on the same socket) with the runtime
# handlers `runc` (io.containerd.runc.v2, runc's state in DIR/runc) and
# `hull` (io.containerd.hull.v2); sandbox_image docker.io/local/pause:hull
# (build it with images/pause-image.sh and import it into namespace k8s.io:
# nothing is pulled); the streaming server on 127.0.0.1 at a free port;
# network namespaces under DIR/state; and CNI (bridge and host-local from
# /usr/lib/cni, loopback added by containerd) on a network of its own, so
# containerds in different DIRs run side by side: a bridge hullXXXXXXXX that
# holds the gateway address and a 10.a.b.0/24 subnet, both derived from a
# hash of DIR (the first that no interface or route on this host uses), IPAM
# state in DIR/cni/ipam. Nothing turns on IP forwarding or NAT: pods reach
# the host's bridge address and each other, nothing beyond. DIR/cri.env
# (KEY=VALUE lines) names the bridge, subnet, gateway, IPAM directory and
# the cgroup CRI_CGROUP_ROOT (a top-level cgroup in every hierarchy) under
# which pods are to put their cgroup_parent.
#
# stop deletes every task and container, stops containerd, kills any shim,
# QEMU or virtiofsd that still names DIR and any process left under
# CRI_CGROUP_ROOT, unmounts everything under DIR (network namespaces too),
# deletes the bridge with any veth on it and removes the cgroups under
# CRI_CGROUP_ROOT. It is idempotent.
set -euo pipefail

usage() {
    echo "usage: private-containerd.sh start DIR [--cri] | stop DIR | status DIR" >&2
    exit 2
}
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || usage
cri=0
case ${3:-} in
    "") ;;
    --cri) [ "$cmd" = start ] || usage; cri=1 ;;
    *) usage ;;
esac
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sock=$dir/containerd.sock
pidfile=$dir/containerd.pid
log=$dir/containerd.log
cri_env=$dir/cri.env
pause_image=docker.io/local/pause:hull

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
    local disabled_cri='"io.containerd.grpc.v1.cri",'
    if [ "$cri" = 1 ]; then disabled_cri=''; fi
    cat > "$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [
  $disabled_cri
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
    [ "$cri" = 1 ] || return 0
    cat >> "$dir/config.toml" <<EOF

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  # Sandboxes ask for oom_score_adj -998; lowering it needs CAP_SYS_RESOURCE,
  # which root in a container (like these test machines) may lack. This
  # keeps every pod at or above containerd's own value instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$dir/runc"
    # runc as a VM runtime's privileged pods are compared with: privileged,
    # without the host's devices.
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc-nodev]
      runtime_type = "io.containerd.runc.v2"
      privileged_without_host_devices = true
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc-nodev.options]
        Root = "$dir/runc"
    # As hull install registers it (no backquotes: this is an unquoted heredoc).
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hull]
      runtime_type = "io.containerd.hull.v2"
      privileged_without_host_devices = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1
EOF
}

# Sets bridge, subnet and gateway from a hash of DIR, salted until neither
# the name nor the subnet is in use on this host.
pick_network() {
    local salt h a b
    for salt in $(seq 0 63); do
        h=$(printf '%s:%s' "$dir" "$salt" | sha256sum | cut -c1-8)
        a=$((16#${h:0:2}))
        b=$((16#${h:2:2}))
        bridge=hull$h
        subnet=10.$a.$b.0/24
        gateway=10.$a.$b.1
        if ! ip link show "$bridge" >/dev/null 2>&1 \
            && [ -z "$(ip -4 route show match "$subnet" | grep -v '^default' || true)" ] \
            && ! ip -4 -o addr show | grep -q " 10\.$a\.$b\."; then
            return 0
        fi
    done
    echo "containerd: no free 10.x.y.0/24 subnet and bridge name for $dir" >&2
    return 1
}

# The bridge exists, with the gateway address, before the first pod: the
# bridge plugin then needs no isGateway, which would turn on IP forwarding.
setup_network() {
    local bridge subnet gateway
    pick_network
    # cri.env first: it is what stop removes the bridge by.
    cat > "$cri_env" <<EOF
CRI_BRIDGE=$bridge
CRI_SUBNET=$subnet
CRI_GATEWAY=$gateway
CRI_IPAM_DIR=$dir/cni/ipam/hull-test
CRI_CGROUP_ROOT=hull-cri-${bridge#hull}
EOF
    ip link add "$bridge" type bridge
    ip addr add "$gateway/24" dev "$bridge"
    ip link set "$bridge" up
    mkdir -p "$dir/cni/net.d" "$dir/cni/ipam"
    cat > "$dir/cni/net.d/10-hull-test.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "hull-test",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{ "subnet": "$subnet", "gateway": "$gateway" }]]
      }
    }
  ]
}
EOF
}

# The value of KEY in cri.env.
cri_value() {
    sed -n "s/^$1=//p" "$cri_env"
}

# CRI_CGROUP_ROOT in every cgroup hierarchy (v1 controllers and v2).
cri_cgroups() {
    local root
    root=$(cri_value CRI_CGROUP_ROOT)
    [ -n "$root" ] || return 0
    find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d -name "$root" 2>/dev/null || true
}

# Kills what is left in the pods' cgroups (containers whose shim is gone).
kill_cri_processes() {
    local pids=''
    for _ in $(seq 1 30); do
        pids=$(cri_cgroups | while read -r cg; do
            find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true
        done | sort -u)
        [ -n "$pids" ] || return 0
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.1
    done
    echo "containerd: processes left in the pods' cgroups: $pids" >&2
}

# Deletes the bridge with whatever veths are still on it, and the pods'
# cgroups. Runs after the network namespaces are unmounted.
remove_cri_network_and_cgroups() {
    local bridge port
    bridge=$(cri_value CRI_BRIDGE)
    if [ -n "$bridge" ] && [ -d "/sys/class/net/$bridge" ]; then
        for port in /sys/class/net/"$bridge"/brif/*; do
            if [ -e "$port" ]; then ip link del "$(basename "$port")" 2>/dev/null || true; fi
        done
        ip link del "$bridge" 2>/dev/null || true
    fi
    cri_cgroups | while read -r cg; do
        find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

# Deepest first, so nested mounts come off before their parents.
unmount_all() {
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
        | sort -r | while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done
}

# What a CRI containerd leaves outside DIR, or that keeps DIR busy.
cleanup_cri() {
    [ -f "$cri_env" ] || return 0
    kill_cri_processes
    unmount_all
    remove_cri_network_and_cgroups
    rm -f "$cri_env"
}

start() {
    if running && answering; then
        echo "containerd: already running (pid $(cat "$pidfile")), socket $sock"
        return 0
    fi
    # A containerd that died in this DIR may have left its network behind.
    cleanup_cri
    if [ "$cri" = 1 ]; then setup_network; fi
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
        # read, not $(cat): a fork per process makes this take seconds.
        { read -r comm < "$p/comm"; } 2>/dev/null || continue
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
    cleanup_cri
    unmount_all
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
