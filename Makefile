# Hull: two commands on a fresh Debian 12 machine (as root):
#   make demo   builds everything and runs a container in a microVM through containerd
#   make test   builds everything and runs every test
SHELL := /bin/bash
.DEFAULT_GOAL := help

PREFIX      ?= /usr/local
HULL_CACHE  ?= /var/cache/hull
ASSETS      := target/hull-assets
INITRD      := $(ASSETS)/hull-initrd.img
ROOTFS      := $(ASSETS)/busybox-rootfs
IMAGE       := $(ASSETS)/busybox-image.tar
DEMO_DIR    := /run/hull-demo
CTR         := ctr -a $(DEMO_DIR)/containerd.sock -n hull-demo
export HULL_CACHE

.PHONY: help deps kernel initrd rootfs image assets build install demo demo-stop test test-kvm fuzz bench bench-cri soak lint clean

help:
	@echo "make demo     install deps, build, install, run busybox in a microVM through containerd (and under runc)"
	@echo "make test     install deps, build, run all tests"
	@echo "make install  install Hull to $(PREFIX) and register it in /etc/containerd/config.toml"
	@echo "make bench    measure Hull beside runc (docs/benchmarks.md)"
	@echo "make bench-cri  pod start-up through CRI, Hull beside runc"
	@echo "make soak     N pod lifecycles through CRI with faults, nothing may be left (N=20 PARALLEL=2 FAULTS=0.5)"

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

image: rootfs
	@images/busybox-image.sh $(IMAGE) local/busybox:latest

assets: kernel initrd rootfs

build: deps
	@echo "build: hull, containerd-shim-hull-v2 and hull-vmm (release)"
	@cargo build --release --locked -p hull-shim -p hull-vmm 2>&1 | grep -vE '^\s+(Compiling|Downloaded|Downloading)' || true
	@[ -x target/release/containerd-shim-hull-v2 ] && [ -x target/release/hull ] && [ -x target/release/hull-vmm ]

# INSTALL_FLAGS=--no-containerd leaves containerd's configuration alone.
install: build assets
	@target/release/hull install --prefix $(PREFIX) $(INSTALL_FLAGS) \
		--kernel $(ASSETS)/vmlinux --initrd $(INITRD)

# A private containerd, so the demo never touches the host's own.
demo: image
	@$(MAKE) --no-print-directory install INSTALL_FLAGS=--no-containerd
	@scripts/private-containerd.sh start $(DEMO_DIR)
	@$(CTR) images import $(IMAGE) >/dev/null
	@echo
	@echo "host kernel:                                   $$(uname -r)"
	@echo "$$ ctr run --rm --runtime io.containerd.hull.v2 local/busybox:latest demo uname -r"
	@$(CTR) run --rm --runtime io.containerd.hull.v2 local/busybox:latest demo-hull uname -r
	@echo "$$ ctr run --rm --runtime io.containerd.runc.v2 local/busybox:latest demo uname -r"
	@$(CTR) run --rm --runtime io.containerd.runc.v2 local/busybox:latest demo-runc uname -r
	@scripts/private-containerd.sh stop $(DEMO_DIR)
	@echo "demo: done; scripts/private-containerd.sh start $(DEMO_DIR) brings that containerd back"

demo-stop:
	@scripts/private-containerd.sh stop $(DEMO_DIR)

# BENCH_FLAGS reach hull bench (e.g. BENCH_FLAGS="-n 7 --pods 20").
bench: install image
	@scripts/bench.sh /run/hull-bench $(ROOTFS) $(IMAGE) $(BENCH_FLAGS)

# Pod start-up through containerd's CRI plugin, hull beside runc.
bench-cri: build assets
	@cargo build --release --locked -p hull-tests --bin hull-cri-bench 2>&1 | grep -vE '^\s+(Compiling|Downloaded|Downloading)' || true
	@HULL_TEST_KERNEL=$(abspath $(ASSETS)/vmlinux) HULL_TEST_INITRD=$(abspath $(INITRD)) \
		target/release/hull-cri-bench -n $(or $(RUNS),5) $(if $(BURST),--burst $(BURST))

# Pod lifecycles through CRI, a share with a fault in the sandbox, each
# checked for leftovers (tests/src/soak.rs); make test runs a small one.
soak: build assets
	@cargo build --release --locked -p hull-tests --bin hull-soak 2>&1 | grep -vE '^\s+(Compiling|Downloaded|Downloading)' || true
	@HULL_TEST_KERNEL=$(abspath $(ASSETS)/vmlinux) HULL_TEST_INITRD=$(abspath $(INITRD)) \
		target/release/hull-soak -n $(or $(N),20) --parallel $(or $(PARALLEL),2) --faults $(or $(FAULTS),0.5)

# Tests find the guest assets through these variables (real paths: runc
# refuses a rootfs path through a symlink, and target/ may be one, see .ci/run).
test: assets
	@echo "test: cargo test (unit, agent-on-host, vsock, end-to-end under QEMU/TCG, CRI pods under runc and hull), then the same on hull-vmm in the nested KVM lab"
	@mkdir -p target
	set -o pipefail; \
	HULL_TEST_KERNEL=$(realpath $(ASSETS)/vmlinux) \
	HULL_TEST_INITRD=$(realpath $(INITRD)) \
	HULL_TEST_ROOTFS=$(realpath $(ROOTFS)) \
	cargo test --locked --workspace -- --test-threads=2 2>&1 | tee target/test.log
	@$(MAKE) --no-print-directory test-kvm
	@$(MAKE) --no-print-directory fuzz
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "test: %d passed, %d failed\n", p, f }' target/test.log

# The end-to-end suites on hull-vmm, inside the nested KVM lab
# (scripts/kvm-lab.sh, docs/kvm-lab.md): all of hull run's, and the ctr and
# CRI scenarios that cover each path hull-vmm serves, beside runc, each
# checking for leftovers. Part of `make test`.
test-kvm: assets
	@echo "test-kvm: end-to-end tests on hull-vmm, in the nested KVM lab"
	HULL_TEST_KERNEL=$(realpath $(ASSETS)/vmlinux) \
	HULL_TEST_INITRD=$(realpath $(INITRD)) \
	HULL_TEST_ROOTFS=$(realpath $(ROOTFS)) \
	scripts/test-kvm.sh

# A short run of every fuzz target (FUZZ_SECONDS each). cargo fuzz wants
# nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain take them.
FUZZ_SECONDS ?= 10
FUZZ_TARGETS := vsock_packet virtqueue config net_frame
fuzz: deps
	@mkdir -p target
	@for target in $(FUZZ_TARGETS); do \
		echo "fuzz: $$target for $(FUZZ_SECONDS) s (log: target/fuzz-$$target.log)"; \
		if ! (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none $$target -- \
			-max_total_time=$(FUZZ_SECONDS) > ../target/fuzz-$$target.log 2>&1); then \
			tail -40 target/fuzz-$$target.log; echo "fuzz: $$target FAILED"; exit 1; \
		fi; \
		grep -E '^Done [0-9]+ runs' target/fuzz-$$target.log || true; \
	done

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

clean:
	cargo clean
