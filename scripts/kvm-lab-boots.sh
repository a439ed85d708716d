#!/usr/bin/env bash
# Counts failed boots of `hull run -- true` on hull-vmm: LOOPS loops side by
# side, RUNS runs each, optionally each loop pinned to its own CPU. Runs
# inside the nested KVM lab; this is how its triple faults were traced to
# vCPU threads moving between L1 CPUs (docs/kvm-lab.md):
#
#   scripts/kvm-lab.sh --cpus 2 -- scripts/kvm-lab-boots.sh 25 2          # 5 of 50 failed
#   scripts/kvm-lab.sh --cpus 2 -- scripts/kvm-lab-boots.sh 25 2 --pin    # 0 of 50
#
# A failed run prints hull's message, the tail of its guest console log and
# L1's kernel messages since the last failure.
set -uo pipefail
runs=${1:?usage: $0 RUNS LOOPS [--pin]} loops=${2:?usage: $0 RUNS LOOPS [--pin]} pin=${3:-}
root=$(cd "$(dirname "$0")/.." && pwd)
rootfs=$root/target/hull-assets/busybox-rootfs
config=$(mktemp)
printf 'hypervisor = "builtin"\n' > "$config"
dmesg -C 2>/dev/null

one_loop() {
    local failed=0
    for i in $(seq "$runs"); do
        if out=$(hull run --config "$config" --rootfs "$rootfs" -- true 2>&1); then
            echo "run $i ok"
        else
            failed=$((failed + 1))
            echo "run $i FAILED: $out"
            log=$(grep -o '/[^ ]*console\.log' <<<"$out" | head -1)
            [ -n "$log" ] && tail -5 "$log"
            dmesg -c 2>/dev/null | grep -v 'Unhandled WRMSR' | tail -10
        fi
    done
    echo "failed $failed of $runs"
}

for n in $(seq 0 $((loops - 1))); do
    (
        # The loop's shell, so all it starts, stays on CPU n.
        [ "$pin" = --pin ] && taskset -p -c "$n" "$BASHPID" >/dev/null
        one_loop
    ) 2>&1 | sed -u "s/^/loop $n: /" &
done
wait
rm -f "$config"
