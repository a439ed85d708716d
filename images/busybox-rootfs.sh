#!/usr/bin/env bash
# Builds a busybox root filesystem from Debian's busybox-static: the static
# binary, a symlink per applet, and the few files a container expects.
#
#   images/busybox-rootfs.sh DIR
set -euo pipefail
dir=${1:?usage: busybox-rootfs.sh DIR}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "rootfs: $busybox missing: apt-get install busybox-static" >&2; exit 1; }
rm -rf "$dir.tmp"
mkdir -p "$dir.tmp"/{bin,etc,tmp,proc,sys,dev,root,home,var}
chmod 1777 "$dir.tmp/tmp"
install -m 0755 "$busybox" "$dir.tmp/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$dir.tmp/bin/$applet"
done
cat > "$dir.tmp/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/home:/bin/sh
PASSWD
cat > "$dir.tmp/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
rm -rf "$dir" && mv "$dir.tmp" "$dir"
echo "rootfs: $dir"
