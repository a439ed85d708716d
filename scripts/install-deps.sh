#!/usr/bin/env bash
# Installs what Hull needs on Debian 12, skipping what is already there:
# Debian packages (QEMU, containerd, runc, the kernel source and build tools,
# busybox-static for the test image, CNI plugins and a static libc for the
# CRI tests) and virtiofsd via cargo install.
set -euo pipefail

packages=(
    qemu-system-x86 containerd runc containernetworking-plugins
    linux-source-6.1 flex bison bc libelf-dev libssl-dev cpio kmod
    busybox-static libseccomp-dev libcap-ng-dev pkg-config protobuf-compiler
    file iproute2 util-linux time gcc libc6-dev lz4
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    if [ "$(id -u)" != 0 ]; then echo "deps: run as root to install packages" >&2; exit 1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "deps: Debian packages present"
fi

virtiofsd_version=1.14.0
if command -v virtiofsd >/dev/null 2>&1 && virtiofsd --version 2>/dev/null | grep -q "$virtiofsd_version"; then
    echo "deps: virtiofsd $virtiofsd_version present"
else
    echo "deps: cargo install virtiofsd $virtiofsd_version (a few minutes)"
    cargo install --locked --version "$virtiofsd_version" --root /usr/local virtiofsd
fi

cargo_fuzz_version=0.13.2
if cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
    echo "deps: cargo-fuzz $cargo_fuzz_version present"
else
    echo "deps: cargo install cargo-fuzz $cargo_fuzz_version (a minute or two)"
    cargo install --locked --version "$cargo_fuzz_version" cargo-fuzz
fi
