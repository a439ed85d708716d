#!/usr/bin/env bash
# Builds an OCI image archive (for `ctr images import`) from Debian's
# busybox-static: one gzip layer made by busybox-rootfs.sh, packed by
# oci-image.sh (byte-identical builds, so the image digest only changes when
# busybox does).
#
#   images/busybox-image.sh [--custom] OUT.tar [NAME]
#
# NAME defaults to docker.io/local/busybox:latest (what containerd makes of
# `local/busybox:latest`). --custom builds a variant whose config sets an
# extra Env (FOO=bar), WorkingDir /tmp and User 65534:65534, named
# docker.io/local/busybox-custom:latest by default, for tests of image config.
set -euo pipefail

custom=0
if [ "${1:-}" = --custom ]; then
    custom=1
    shift
fi
out=${1:?usage: busybox-image.sh [--custom] OUT.tar [NAME]}
if [ "$custom" = 1 ]; then
    name=${2:-docker.io/local/busybox-custom:latest}
else
    name=${2:-docker.io/local/busybox:latest}
fi
here=$(cd "$(dirname "$0")" && pwd)
umask 022

work=$(mktemp -d "${TMPDIR:-/tmp}/busybox-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
# shellcheck source=images/oci-image.sh
. "$here/oci-image.sh"

"$here/busybox-rootfs.sh" "$work/rootfs" >/dev/null
mkdir "$work/oci"

env='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
extra=''
if [ "$custom" = 1 ]; then
    env="$env,\"FOO=bar\""
    extra=',"WorkingDir":"/tmp","User":"65534:65534"'
fi
oci_image_archive "$work/rootfs" "\"Env\":[$env],\"Cmd\":[\"sh\"]$extra" \
    "$out" "$name" images/busybox-image.sh "$work/oci"
