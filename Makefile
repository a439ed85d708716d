# Hull: two commands on a fresh Debian 12 machine (as root):
#   make demo   builds everything and runs a container in a microVM
#   make test   builds everything and runs every test
SHELL := /bin/bash
.DEFAULT_GOAL := help

PREFIX      ?= /usr/local
HULL_CACHE  ?= /var/cache/hull
ASSETS      := target/hull-assets
INITRD      := $(ASSETS)/hull-initrd.img
ROOTFS      := $(ASSETS)/busybox-rootfs
export HULL_CACHE

.PHONY: help deps kernel initrd rootfs assets build install demo test lint clean FORCE

help:
	@echo "make demo     install deps, build, run busybox in a microVM with hull run"
	@echo "make test     install deps, build, run all tests"
	@echo "make install  install binaries to $(PREFIX)/bin and guest assets to $(PREFIX)/share/hull"

deps:
	@scripts/install-deps.sh

# The kernel is cached under $(HULL_CACHE)/kernel/<key>; the link points at it.
kernel: deps
	@mkdir -p $(ASSETS)
	@ln -sfn "$$(guest-kernel/build.sh)" $(ASSETS)/vmlinux
	@echo "kernel: $$(readlink $(ASSETS)/vmlinux)"

initrd: deps
	@images/build-initrd.sh $(ASSETS)

rootfs: deps
	@images/busybox-rootfs.sh $(ROOTFS)

assets: kernel initrd rootfs

build: deps
	@echo "build: host binaries (release)"
	@cargo build --release --locked -p hull-shim

install: build assets
	install -d $(PREFIX)/bin $(PREFIX)/share/hull /etc/hull
	install -m 0755 target/release/hull $(PREFIX)/bin/hull
	install -m 0644 $$(readlink -f $(ASSETS)/vmlinux) $(PREFIX)/share/hull/vmlinux
	install -m 0644 $(INITRD) $(PREFIX)/share/hull/hull-initrd.img
	@[ -f /etc/hull/config.toml ] || install -m 0644 docs/config.toml.example /etc/hull/config.toml
	@echo "install: hull in $(PREFIX)/bin, guest assets in $(PREFIX)/share/hull"

demo: install rootfs
	@echo "demo: host kernel $$(uname -r)"
	@echo "demo: hull run --rootfs $(ROOTFS) -- uname -r"
	@hull run -v --rootfs $(ROOTFS) -- uname -r

# Tests find the guest assets through these variables.
test: assets
	@echo "test: cargo test (unit, agent-on-host, vsock, end-to-end under QEMU/TCG)"
	HULL_TEST_KERNEL=$(abspath $(ASSETS)/vmlinux) \
	HULL_TEST_INITRD=$(abspath $(INITRD)) \
	HULL_TEST_ROOTFS=$(abspath $(ROOTFS)) \
	cargo test --locked --workspace -- --test-threads=2

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

clean:
	cargo clean
