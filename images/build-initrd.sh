#!/usr/bin/env bash
# Builds hull-initrd.img: an uncompressed initramfs whose /init is the static
# hull-agent. Uncompressed because the kernel copies it faster than it could
# inflate it under software emulation.
#
#   images/build-initrd.sh OUT_DIR      writes OUT_DIR/hull-initrd.img
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: build-initrd.sh OUT_DIR}
mkdir -p "$out"

target=x86_64-unknown-linux-gnu
echo "initrd: building the static hull-agent (profile agent: size-optimised, it is unpacked on every boot)" >&2
# --target keeps crt-static away from build scripts and proc macros, which
# must stay dynamic. libseccomp is linked statically into the agent.
(cd "$here" && \
    RUSTFLAGS="-C target-feature=+crt-static" \
    LIBSECCOMP_LINK_TYPE=static \
    LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
    cargo build --profile agent --locked -p hull-agent --target "$target" 2>&1 | grep -vE '^\s+(Compiling|Downloaded|Downloading)' >&2 || true)
agent="$here/target/$target/agent/hull-agent"
[ -x "$agent" ] || { echo "initrd: hull-agent was not built" >&2; exit 1; }
if file "$agent" | grep -q 'dynamically linked'; then
    echo "initrd: $agent is dynamically linked; it must be static to run as /init" >&2
    exit 1
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/hull-initrd.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,run,tmp,etc}
install -m 0755 "$agent" "$stage/init"
mknod -m 0600 "$stage/dev/console" c 5 1
mknod -m 0666 "$stage/dev/null" c 1 3
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null --quiet -o -H newc --reproducible) > "$out/hull-initrd.img.tmp"
mv "$out/hull-initrd.img.tmp" "$out/hull-initrd.img"
echo "initrd: $out/hull-initrd.img ($(du -h "$out/hull-initrd.img" | cut -f1))" >&2
