#!/usr/bin/env bash
# Builds Hull's guest kernel (an uncompressed vmlinux with PVH entry, no
# modules) from Debian's linux-source-6.1 and hull.config, into a cache outside
# the clone keyed by the hash of the config fragment, this script and the
# source package version. Prints the path of the cached vmlinux.
#
#   guest-kernel/build.sh            build (or reuse) and print the path
#   HULL_CACHE=/dir guest-kernel/build.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${HULL_CACHE:-/var/cache/hull}
tarball=/usr/src/linux-source-6.1.tar.xz

[ -f "$tarball" ] || { echo "guest-kernel: $tarball missing: apt-get install linux-source-6.1" >&2; exit 1; }
source_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { echo "$source_version"; cat "$here/hull.config" "$here/build.sh"; } | sha256sum | cut -c1-16)
out="$cache/kernel/$key"

if [ -f "$out/vmlinux" ]; then
    echo "guest-kernel: cached $out/vmlinux (key $key)" >&2
    echo "$out/vmlinux"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/hull-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "guest-kernel: building linux-source $source_version with hull.config (key $key); takes about 10 minutes on 2 cores" >&2
start=$(date +%s)
tar -xf "$tarball" -C "$work"
src="$work/linux-source-6.1"
make -C "$src" -s allnoconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/hull.config" >/dev/null 2>&1
make -C "$src" -s olddefconfig
# Every option the fragment asks for must have survived olddefconfig.
missing=0
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    grep -qxF "$line" "$src/.config" || { echo "guest-kernel: option not applied: $line" >&2; missing=1; }
done < "$here/hull.config"
[ "$missing" = 0 ] || exit 1
make -C "$src" -j"$(nproc)" vmlinux 2>&1 | grep -E '^\s*(LD|error|Error)' | sed 's/^/guest-kernel: /' >&2 || true
[ -f "$src/vmlinux" ] || { echo "guest-kernel: build failed" >&2; exit 1; }
mkdir -p "$out.tmp"
cp "$src/vmlinux" "$out.tmp/vmlinux"
cp "$src/.config" "$out.tmp/config"
make -C "$src" -s kernelrelease > "$out.tmp/release"
echo "$(( $(date +%s) - start ))" > "$out.tmp/build-seconds"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "guest-kernel: built $out/vmlinux in $(cat "$out/build-seconds") s" >&2
echo "$out/vmlinux"
