#!/usr/bin/env bash
# hull bench on each backend inside one L1 of the nested KVM lab
# (docs/kvm-lab.md): hull-vmm on L1's KVM, QEMU on L1's KVM, and QEMU under
# TCG, one after the other in the same VM, then the ratios of their medians.
#
#   scripts/bench-kvm.sh [ITERATIONS]
#
# Uses the installed Hull (`make install`) and its guest kernel and initrd.
set -euo pipefail
iterations=${1:-5}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out=$root/target/bench-kvm
mkdir -p "$out"
rootfs=$root/target/hull-assets/busybox-rootfs
[ -d "$rootfs" ] || { echo "bench-kvm: no $rootfs (run 'make rootfs')" >&2; exit 2; }
printf 'hypervisor = "builtin"\n' > "$out/builtin.toml"
# QEMU under TCG inside L1 is emulation inside emulation: give its boot
# the time it needs.
printf 'hypervisor = "qemu"\naccelerator = "kvm"\n' > "$out/qemu-kvm.toml"
printf 'hypervisor = "qemu"\naccelerator = "tcg"\nagent_timeout_secs = 300\n' > "$out/qemu-tcg.toml"
cat > "$out/run.sh" <<SCRIPT
#!/bin/bash
for backend in builtin qemu-kvm qemu-tcg; do
    echo "## \$backend (hull bench -n $iterations --burst 0 --idle 1 --stdout-mb 0 --config $out/\$backend.toml)"
    hull bench -n $iterations --burst 0 --idle 1 --stdout-mb 0 --rootfs $rootfs --config $out/\$backend.toml 2>&1
    echo
done
SCRIPT
chmod +x "$out/run.sh"
# L1 writes nothing back to the host: its output is the record.
"$here/kvm-lab.sh" --timeout 3000 -- "$out/run.sh" 2>&1 | tee "$out/lab.log"

# The ratios, from the tables just printed (medians in the second column);
# a backend whose bench failed shows none.
section() { awk -v b="## $1 " 'index($0, b) == 1 { on = 1; next } /^## / { on = 0 } on' "$out/lab.log"; }
median() { section "$1" | awk -F'|' -v row="$2" 'index($2, row) { gsub(/[^0-9]/, "", $3); print $3; exit }'; }
pss() { section "$1" | awk -F'|' 'index($2, "VMM PSS") { gsub(/[^0-9.]/, "", $3); print $3; exit }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "## ratios, same L1 (QEMU ÷ hull-vmm)"
echo
echo "| measure | hull-vmm | QEMU/KVM | QEMU/TCG | QEMU/KVM ÷ hull-vmm | QEMU/TCG ÷ hull-vmm |"
echo "|---|---|---|---|---|---|"
shown() { if [ -n "$1" ]; then echo "$1 $2"; else echo "failed"; fi; }
for row in "VMM start → agent answers" "whole run incl. tear-down"; do
    b=$(median builtin "$row"); k=$(median qemu-kvm "$row"); t=$(median qemu-tcg "$row")
    echo "| $row (median) | $(shown "$b" ms) | $(shown "$k" ms) | $(shown "$t" ms) | $(ratio "$k" "$b") | $(ratio "$t" "$b") |"
done
b=$(pss builtin); k=$(pss qemu-kvm); t=$(pss qemu-tcg)
echo "| VMM PSS, one idle container | $(shown "$b" MiB) | $(shown "$k" MiB) | $(shown "$t" MiB) | $(ratio "$k" "$b") | $(ratio "$t" "$b") |"
