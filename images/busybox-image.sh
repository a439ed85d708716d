#!/usr/bin/env bash
# Builds an OCI image archive (for `ctr images import`) from Debian's
# busybox-static: one gzip layer made by busybox-rootfs.sh, a config, a
# manifest, index.json naming the image, and oci-layout. Sorted tar entries,
# fixed mtimes, owners and gzip headers make repeated builds byte-identical,
# so the image digest only changes when busybox does.
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

# Deterministic tar: sorted names, epoch mtimes, root owner, no atime/ctime.
det_tar() {
    local dir=$1
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$dir" -cf - .
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
# Moves FILE into the blob store and prints its digest.
store_blob() {
    local digest
    digest=$(sha "$1")
    mv "$1" "$work/layout/blobs/sha256/$digest"
    echo "$digest"
}

"$here/busybox-rootfs.sh" "$work/rootfs" >/dev/null
mkdir -p "$work/layout/blobs/sha256"

det_tar "$work/rootfs" > "$work/layer.tar"
diff_id=$(sha "$work/layer.tar")
gzip -n -9 < "$work/layer.tar" > "$work/layer.tar.gz"
layer_size=$(size "$work/layer.tar.gz")
layer_digest=$(store_blob "$work/layer.tar.gz")

env='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
extra=''
if [ "$custom" = 1 ]; then
    env="$env,\"FOO=bar\""
    extra=',"WorkingDir":"/tmp","User":"65534:65534"'
fi
printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":[%s],"Cmd":["sh"]%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"images/busybox-image.sh"}]}' \
    "$env" "$extra" "$diff_id" > "$work/config.json"
config_size=$(size "$work/config.json")
config_digest=$(store_blob "$work/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" > "$work/manifest.json"
manifest_size=$(size "$work/manifest.json")
manifest_digest=$(store_blob "$work/manifest.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s"}}]}' \
    "$manifest_digest" "$manifest_size" "$name" > "$work/layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"

mkdir -p "$(dirname "$out")"
det_tar "$work/layout" > "$out.tmp"
mv "$out.tmp" "$out"
echo "image: $out ($name, sha256:$manifest_digest)"
