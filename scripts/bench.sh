#!/usr/bin/env bash
# `make bench`: hull bench on the installed Hull, with a private containerd
# (scripts/private-containerd.sh, in DIR) for the rows that go through
# containerd, stopped again however the bench ends.
#
#   scripts/bench.sh DIR ROOTFS IMAGE_TAR [hull bench options...]
set -euo pipefail
dir=${1:?usage: bench.sh DIR ROOTFS IMAGE_TAR [options]}
rootfs=${2:?rootfs}
image_tar=${3:?image tar}
shift 3
here=$(cd "$(dirname "$0")" && pwd)

trap '"$here/private-containerd.sh" stop "$dir"' EXIT
"$here/private-containerd.sh" start "$dir"
echo "bench: importing $image_tar into containerd namespace hull-bench"
ctr -a "$dir/containerd.sock" -n hull-bench images import "$image_tar" >/dev/null
echo "bench: hull bench --rootfs $rootfs --containerd $dir/containerd.sock $*"
hull bench --rootfs "$rootfs" --containerd "$dir/containerd.sock" --image local/busybox:latest "$@"
