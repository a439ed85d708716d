#!/usr/bin/env bash
# The nested KVM lab: runs a command inside a Linux VM (L1) that QEMU emulates
# with AMD-V (TCG, -cpu max), where /dev/kvm is real hardware virtualization
# as far as hull-vmm can tell. See ENVIRONMENT.md, "Real KVM one level down",
# and docs/kvm-lab.md.
#
#   scripts/kvm-lab.sh [--memory MIB] [--cpus N] [--timeout SECONDS] [--env NAME]... -- COMMAND [ARG]...
#
# L1 runs Debian's cloud kernel (its kvm, kvm_amd and the modules the lab
# needs) with this machine's root file system shared read-only through
# virtiofsd, under a tmpfs overlay: L1 sees the host's programs, the checkout
# and the caches, and whatever it writes stays in L1. COMMAND runs as root in
# the current directory; its output streams here, and the script exits with
# its status; with --timeout, a command still running after SECONDS is
# killed and the script exits 124 (and L1 itself is killed a minute later if
# it does not come down). An L1 the emulator wedges is stopped 90 s after
# its last heartbeat and the script exits 75. The kernel and the lab's
# initramfs are cached in /var/cache/hull/kvm-lab/<key>, keyed by the
# package's version and this script.
set -euo pipefail

memory_mib=3072
# One CPU: with two, about one boot of hull-vmm in ten triple-faults when the
# scheduler moves its vCPU thread from one L1 CPU to the other (QEMU 7.2's
# emulation of AMD-V; docs/kvm-lab.md). An L2 VM may have more, though the
# test suites keep theirs at one (scripts/test-kvm.sh).
cpus=1
timeout_secs=0
pass_env=(PATH HOME TERM RUST_LOG RUST_BACKTRACE)
while [ $# -gt 0 ]; do
    case "$1" in
        --memory) memory_mib="$2"; shift 2 ;;
        --cpus) cpus="$2"; shift 2 ;;
        --timeout) timeout_secs="$2"; shift 2 ;;
        --env) pass_env+=("$2"); shift 2 ;;
        --) shift; break ;;
        *) echo "kvm-lab: unknown option '$1' (usage: $0 [--memory MIB] [--cpus N] [--timeout SECONDS] [--env NAME]... -- COMMAND...)" >&2; exit 2 ;;
    esac
done
case "$timeout_secs" in
    ''|*[!0-9]*) echo "kvm-lab: --timeout wants whole seconds, not '$timeout_secs'" >&2; exit 2 ;;
esac
if [ $# -eq 0 ]; then
    echo "kvm-lab: no command (usage: $0 [--memory MIB] [--cpus N] [--timeout SECONDS] [--env NAME]... -- COMMAND...)" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "kvm-lab: run as root (virtiofsd shares the host's root into L1)" >&2
    exit 2
fi
for tool in qemu-system-x86_64 virtiofsd busybox lz4 cpio depmod apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || {
        echo "kvm-lab: '$tool' is missing (scripts/install-deps.sh installs it)" >&2
        exit 2
    }
done

# Debian renames the kernel package at every ABI bump: resolve it through
# the metapackage.
meta=linux-image-cloud-amd64
package=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
if [ -z "$package" ]; then
    echo "kvm-lab: apt knows no '$meta' (run apt-get update?)" >&2
    exit 2
fi
version=$(apt-cache policy "$package" | awk '/Candidate:/ { print $2 }')
release=${package#linux-image-}
here=$(cd "$(dirname "$0")" && pwd)
key=$( { echo "$package $version"; cat "$0" "$here/kvm-lab/init"; } | sha256sum | cut -c1-16)
cache=/var/cache/hull/kvm-lab/$key

build_lab() {
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    echo "kvm-lab: building the L1 kernel and initramfs from $package $version into $cache"
    (cd "$work" && apt-get download -q "$package=$version" >/dev/null 2>&1) || {
        echo "kvm-lab: could not download $package $version" >&2
        return 1
    }
    dpkg-deb -x "$work"/*.deb "$work/pkg"
    local bz="$work/pkg/boot/vmlinuz-$release"
    # The bzImage's payload: setup_sects (0x1f1) gives where the protected-mode
    # code starts; payload_offset (0x248) and payload_length (0x24c) locate the
    # compressed vmlinux in it. QEMU's PVH loader needs that ELF.
    local setup_sects payload_offset payload_length
    setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
    payload_offset=$(od -An -tu4 -j $((0x248)) -N4 "$bz" | tr -d ' ')
    payload_length=$(od -An -tu4 -j $((0x24c)) -N4 "$bz" | tr -d ' ')
    [ "$setup_sects" = 0 ] && setup_sects=4
    local start=$(((setup_sects + 1) * 512 + payload_offset))
    dd if="$bz" of="$work/payload" bs=1M iflag=skip_bytes,count_bytes \
        skip="$start" count="$payload_length" status=none
    case "$(od -An -tx1 -N4 "$work/payload" | tr -d ' ')" in
        02214c18) lz4 -dc < "$work/payload" > "$work/vmlinux" 2>/dev/null || true ;;
        fd377a58) xz -dc < "$work/payload" > "$work/vmlinux" 2>/dev/null || true ;;
        *) echo "kvm-lab: $bz has a payload this script cannot unpack" >&2; return 1 ;;
    esac
    if [ "$(od -An -c -j1 -N3 "$work/vmlinux" | tr -d ' ')" != ELF ]; then
        echo "kvm-lab: unpacking $bz did not give an ELF vmlinux" >&2
        return 1
    fi

    # All modules, for L1's modprobe (kvm_amd, tun, overlay, bridge, ...).
    depmod -b "$work/pkg" "$release"

    # The initramfs: busybox, what it takes to mount the host's root, and /init.
    local root="$work/initramfs"
    mkdir -p "$root"/{bin,dev,proc,sys,host,newroot,upper,modules}
    cp "$(command -v busybox)" "$root/bin/busybox"
    # The modules stage 1 loads, in dependency order (modprobe resolves it
    # here; L1's busybox only has insmod until the host's root is mounted).
    local m path
    for m in virtio_mmio virtiofs overlay; do
        modprobe -d "$work/pkg" -S "$release" --show-depends "$m" || {
            echo "kvm-lab: $package has no module $m" >&2
            return 1
        }
    done | awk '$1 == "insmod" { print $2 }' | while read -r path; do
        m=$(basename "$path")
        if [ ! -f "$root/modules/$m" ]; then
            cp "$path" "$root/modules/$m"
            echo "$m" >> "$root/modules/order"
        fi
    done
    cp "$here/kvm-lab/init" "$root/init"
    chmod 755 "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet) > "$work/initramfs.img"

    local staging="$cache.tmp"
    rm -rf "$staging"
    mkdir -p "$staging"
    mv "$work/vmlinux" "$work/initramfs.img" "$staging/"
    mv "$work/pkg/lib/modules" "$staging/modules"
    echo "$package $version" > "$staging/release"
    rm -rf "$cache"
    mv "$staging" "$cache"
}

if [ ! -f "$cache/release" ]; then
    build_lab
else
    echo "kvm-lab: L1 $(cat "$cache/release") (cached in $cache)" >&2
fi

run=$(mktemp -d /tmp/hull-kvm-lab.XXXXXX)
virtiofsd_pid=
qemu_pid=
watcher_pid=
drain_pid=
cleanup() {
    [ -n "$watcher_pid" ] && kill "$watcher_pid" 2>/dev/null || true
    [ -n "$drain_pid" ] && kill "$drain_pid" 2>/dev/null || true
    [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
    [ -n "$virtiofsd_pid" ] && kill "$virtiofsd_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# What L1 runs: the command, where and with what environment, NUL-separated.
printf '%s\0' "$@" > "$run/argv"
pwd > "$run/cwd"
for name in "${pass_env[@]}"; do
    if [ -n "${!name+set}" ]; then printf '%s=%s\0' "$name" "${!name}"; fi
done > "$run/env"
echo "$cache" > "$run/cache"
echo "$timeout_secs" > "$run/timeout"
echo "$here/kvm-lab/stage2" > "$run/stage2"

virtiofsd --socket-path "$run/fs.sock" --shared-dir / --readonly --sandbox none \
    --cache always --no-announce-submounts --log-level error &
virtiofsd_pid=$!
for _ in $(seq 100); do [ -S "$run/fs.sock" ] && break; sleep 0.05; done
[ -S "$run/fs.sock" ] || { echo "kvm-lab: virtiofsd did not start" >&2; exit 2; }

# Under TCG, L1 is told the TSC frequency: calibrating it against the
# emulated PIT can stall the boot for minutes on a busy host.
khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
cmdline="console=ttyS0 quiet loglevel=1 panic=-1 pci=off tsc_early_khz=$khz hull_lab=$run"

# L1's monitor, through two FIFOs QEMU holds open (so neither side ever
# blocks on the other): commands go into monitor.in, and everything QEMU
# answers is drained into monitor.log.
# (cat holds its FIFO read-write too: it never waits for QEMU to open it.)
mkfifo "$run/monitor.in" "$run/monitor.out"
cat 0<>"$run/monitor.out" >> "$run/monitor.log" &
drain_pid=$!

# QEMU 7.2's emulation of nested AMD-V passes L1's own interrupts (its
# timer's, above all) to L1 late while an L2 guest runs, when L2 leaves for
# reasons of its own (docs/kvm-lab.md, "L1 wedges"). Now and then it never
# does, and L1, with every timeout in it, stands still until the backstop
# below. L1 prints a heartbeat every 10 s (stage2); the console reader
# stamps $run/alive with each. Ninety seconds without one is that wedge:
# L1 is stopped at once, with what its monitor shows, and the script exits
# 75, which scripts/test-kvm.sh takes as "run the suite again", not as a
# test failure.
monitor() {
    local size
    size=$(stat -c %s "$run/monitor.log")
    # Opened read-write: a write never waits on a QEMU that has gone.
    echo "$1" 1<>"$run/monitor.in"
    sleep 1
    tail -c +"$((size + 1))" "$run/monitor.log" 2>/dev/null | tr -d '\r'
}
watch_for_wedge() {
    local silent
    while sleep 15; do
        # Before L1's first heartbeat it is still booting; the backstop
        # covers a boot that never ends.
        [ -f "$run/alive" ] || continue
        silent=$(($(date +%s) - $(stat -c %Y "$run/alive")))
        if [ "$silent" -ge 90 ]; then
            {
                echo "kvm-lab: L1 stood still for $silent s (no heartbeat): the emulator wedged it; stopping L1"
                monitor "info lapic" | grep -E '^(LVTT|Timer|ISR|IRR)'
                monitor "info registers" | grep -E '^RIP='
            } >&2
            touch "$run/wedged"
            kill "$qemu_pid"
            return
        fi
    done
}

# mawk (Debian's awk) reads a pipe in blocks unless told otherwise, which
# would hold the command's output back until L1 ends.
awk_flags=()
case "$(awk -W version 2>&1)" in *mawk*) awk_flags=(-W interactive) ;; esac
# The backstop for an L1 that hangs: L1 boots in seconds, and stage 2 ends
# the command itself at the timeout.
guard=()
[ "$timeout_secs" -gt 0 ] && guard=(timeout -s KILL "$((timeout_secs + 60))")
"${guard[@]}" qemu-system-x86_64 \
    -M microvm,x-option-roms=off,rtc=on,memory-backend=mem \
    -object memory-backend-memfd,id=mem,size="${memory_mib}M",share=on \
    -m "${memory_mib}M" -smp "$cpus" -accel tcg,thread=single -cpu max,-vgif \
    -kernel "$cache/vmlinux" -initrd "$cache/initramfs.img" -append "$cmdline" \
    -chardev socket,id=hostroot,path="$run/fs.sock" \
    -device vhost-user-fs-device,chardev=hostroot,tag=hostroot \
    -display none -chardev pipe,id=monitor,path="$run/monitor" \
    -mon chardev=monitor,mode=readline -serial stdio -no-reboot </dev/null \
    > >(awk "${awk_flags[@]}" -v status="$run/status" -v alive="$run/alive" '
        { sub(/\r$/, "") }
        /^kvm-lab: exit [0-9]+$/ { if (!done) print $3 > status; done = 1; next }
        # The heartbeat, which may land inside a line of the command output.
        /kvm-lab: alive/ { sub(/kvm-lab: alive/, ""); print "" > alive; close(alive); if ($0 == "") next }
        /^\[ *[0-9.]+\] sysrq: Resetting$/ { next }
        { print; fflush() }') &
qemu_pid=$!
watch_for_wedge &
watcher_pid=$!
wait "$qemu_pid" || true
qemu_pid=
kill "$watcher_pid" 2>/dev/null || true
watcher_pid=
# The awk behind the process substitution may still be writing.
for _ in $(seq 50); do [ -f "$run/status" ] && break; sleep 0.1; done

if [ -f "$run/wedged" ]; then
    exit 75
fi
if [ ! -f "$run/status" ]; then
    echo "kvm-lab: L1 stopped without reporting the command's status" >&2
    exit 125
fi
exit "$(cat "$run/status")"
