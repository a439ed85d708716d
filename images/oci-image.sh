# Helpers to pack a directory as a one-layer OCI image archive (for
# `ctr images import`), sourced by busybox-image.sh and pause-image.sh.
# Sorted tar entries, fixed mtimes, owners and gzip headers make repeated
# builds byte-identical, so an image digest only changes with its content.
#
#   oci_image_archive ROOTFS CONFIG OUT NAME CREATED_BY SCRATCH
#
# CONFIG is the body of the image config's "config" object (for example
# `"Env":["PATH=/bin"],"Cmd":["sh"]`); CREATED_BY goes into its history;
# SCRATCH is an empty directory for the layout, removed by the caller.

# Deterministic tar: sorted names, epoch mtimes, root owner, no atime/ctime.
oci_det_tar() {
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$1" -cf - .
}

oci_sha() { sha256sum "$1" | cut -d' ' -f1; }
oci_size() { stat -c %s "$1"; }

oci_image_archive() {
    local rootfs=$1 config=$2 out=$3 name=$4 created_by=$5 work=$6
    local blobs
    blobs=$work/layout/blobs/sha256
    mkdir -p "$blobs"
    # Moves FILE into the blob store and prints its digest.
    store_blob() {
        local digest
        digest=$(oci_sha "$1")
        mv "$1" "$blobs/$digest"
        echo "$digest"
    }

    oci_det_tar "$rootfs" > "$work/layer.tar"
    local diff_id layer_size layer_digest
    diff_id=$(oci_sha "$work/layer.tar")
    gzip -n -9 < "$work/layer.tar" > "$work/layer.tar.gz"
    layer_size=$(oci_size "$work/layer.tar.gz")
    layer_digest=$(store_blob "$work/layer.tar.gz")

    printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"%s"}]}' \
        "$config" "$diff_id" "$created_by" > "$work/config.json"
    local config_size config_digest
    config_size=$(oci_size "$work/config.json")
    config_digest=$(store_blob "$work/config.json")

    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "$config_digest" "$config_size" "$layer_digest" "$layer_size" > "$work/manifest.json"
    local manifest_size manifest_digest
    manifest_size=$(oci_size "$work/manifest.json")
    manifest_digest=$(store_blob "$work/manifest.json")

    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s"}}]}' \
        "$manifest_digest" "$manifest_size" "$name" > "$work/layout/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"

    mkdir -p "$(dirname "$out")"
    oci_det_tar "$work/layout" > "$out.tmp"
    mv "$out.tmp" "$out"
    echo "image: $out ($name, sha256:$manifest_digest)"
}
