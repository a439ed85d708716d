#!/usr/bin/env bash
# Builds the pod sandbox ("pause") image the CRI plugin of the test
# containerd uses as sandbox_image, so no registry is needed: pause/pause.c
# compiled with gcc -static, alone in one layer, packed by oci-image.sh
# (byte-identical builds).
#
#   images/pause-image.sh OUT.tar [NAME]
#
# NAME defaults to docker.io/local/pause:hull.
set -euo pipefail

out=${1:?usage: pause-image.sh OUT.tar [NAME]}
name=${2:-docker.io/local/pause:hull}
here=$(cd "$(dirname "$0")" && pwd)
umask 022

command -v gcc >/dev/null || { echo "pause-image: gcc missing: apt-get install gcc libc6-dev" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/pause-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
# shellcheck source=images/oci-image.sh
. "$here/oci-image.sh"

mkdir -p "$work/rootfs" "$work/oci"
# -s: no symbols or debug paths, so the binary does not depend on where the
# source was checked out.
gcc -static -Os -s -Wall -Wextra -Werror -o "$work/rootfs/pause" "$here/pause/pause.c"
oci_image_archive "$work/rootfs" '"Env":["PATH=/"],"Entrypoint":["/pause"]' \
    "$out" "$name" images/pause-image.sh "$work/oci"
