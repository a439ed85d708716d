#!/usr/bin/env bash
# How far a Hull guest's wall clock strays from the host's over time: runs
# a container under `hull run` that prints the guest's `date +%s` once a
# second, stamps each line with the host's clock, and prints, per window,
# the guest's offset from the host (guest minus host, in seconds). The
# guest's clock only gives whole seconds here and each line reaches the host
# a little late, so guest - host is never above the true offset; over the
# ~600 samples of a 10-minute window its maximum comes within the shortest
# delivery time of it. A clock that drifts shows as a trend across windows.
#
#   scripts/guest-clock-drift.sh [MINUTES] [WINDOW_MINUTES]     (as root)
#   scripts/guest-clock-drift.sh --analyse SAMPLES [WINDOW_MINUTES]
#
# HULL (default: hull on PATH) and HULL_ROOTFS (default: the busybox rootfs
# `make rootfs` builds) choose what runs; HULL_CONFIG is passed through.
# The samples are kept in $TMPDIR/guest-clock-drift.samples.
set -euo pipefail
cd "$(dirname "$0")/.."

analyse() {
    local samples=$1 window=$2
    awk -v window="$((window * 60))" '
        NR == 1 { start = $1 }
        {
            w = int(($1 - start) / window)
            offset = $2 - $1
            if (!(w in best) || offset > best[w]) best[w] = offset
            if (w > last) last = w
            n[w]++
        }
        END {
            printf "| minutes | samples | guest − host (s) |\n|---|---|---|\n"
            for (w = 0; w <= last; w++)
                if (n[w]) printf "| %d–%d | %d | %+.3f |\n", w * window / 60, (w + 1) * window / 60, n[w], best[w]
        }' "$samples"
}

if [ "${1:-}" = --analyse ]; then
    analyse "$2" "${3:-10}"
    exit 0
fi
minutes=${1:-60}
window=${2:-10}
hull=${HULL:-hull}
rootfs=${HULL_ROOTFS:-target/hull-assets/busybox-rootfs}
samples=${TMPDIR:-/tmp}/guest-clock-drift.samples
[ -d "$rootfs" ] || { echo "guest-clock-drift: no rootfs at $rootfs (make rootfs, or set HULL_ROOTFS)" >&2; exit 1; }
echo "guest-clock-drift: $minutes minutes of the guest's clock beside the host's (samples in $samples)" >&2
timeout "$((minutes * 60))" "$hull" run --rootfs "$rootfs" -- \
    sh -c 'while :; do date +%s; sleep 1; done' |
    while read -r guest; do echo "$(date +%s.%N) $guest"; done > "$samples" || true
analyse "$samples" "$window"
