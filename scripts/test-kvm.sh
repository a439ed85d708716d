#!/usr/bin/env bash
# The end-to-end suites on hull-vmm, in the nested KVM lab (docs/kvm-lab.md):
# Hull's guest under real KVM, one level down. The tests are built here, on
# the host (the lab sees this checkout read-only), and each suite's binary
# runs in a lab VM from its package's directory, as cargo would run it.
#
#   scripts/test-kvm.sh    (make test-kvm; part of make test)
#
# Needs the guest assets in HULL_TEST_KERNEL, HULL_TEST_INITRD and
# HULL_TEST_ROOTFS (the Makefile sets them). Appends the tests' output to
# target/test.log and exits non-zero if any suite failed.
set -euo pipefail
cd "$(dirname "$0")/.."

for var in HULL_TEST_KERNEL HULL_TEST_INITRD HULL_TEST_ROOTFS; do
    [ -n "${!var:-}" ] || { echo "test-kvm: $var is not set (run make test-kvm)" >&2; exit 2; }
done
# hull_run's own config chooses hull-vmm; the containerd suites leave
# `hypervisor = "auto"`, which is hull-vmm wherever KVM has VT-x/AMD-V.
export HULL_TEST_HYPERVISOR=builtin
# The lab's one emulated CPU runs the host side and both test threads' VMs.
export HULL_TEST_AGENT_TIMEOUT=120

# What runs there: the binary, its package, and the tests (all if none;
# each a whole test name, or `--skip NAME`).
# The containerd scenarios are those that reach a path of hull-vmm's that
# hull_run does not (exec with and without a terminal, pause, stats, the VMM
# killed under a task, a pod's network through virtio-net, volumes,
# hull-vmm stopped under a task and as it is deleted, virtiofsd killed, the
# guest kernel panicking); the rest differ
# from their QEMU runs in make test only in the backend. The lab's one
# emulated CPU makes each boot take seconds, so the choice keeps the lab
# near ten minutes.
#
# Guests with two vCPUs stay out (two_vcpus_give_the_container_two_cpus,
# the_vm_has_the_pods_size): one vCPU spinning on the other, which waits in
# L1 for a CPU that L1 never gets back, wedged L1 in about half the runs
# (QEMU 7.2's nested AMD-V; docs/kvm-lab.md, "L1 wedges").
suites=(
    "hull_run shim --skip two_vcpus_give_the_container_two_cpus"
    "ctr_hull tests exec_with_and_without_terminal_matches_runc pause_and_resume_match_runc
        ps_and_metrics_match_runc killing_the_vm_ends_the_task_and_cleans_up"
    "cri_hull tests pod_network_names_and_shared_namespaces
        volumes_bind_read_only_files_empty_dir_and_tmpfs port_forward_reaches_the_pods_ports
        mounts_propagate_between_a_pods_containers"
    "faults tests vmm_stopped virtiofsd_killed vmm_stopped_during_delete guest_kernel_panicked"
    "pool tests a_pod_takes_a_vm_booted_ahead_and_its_network_matches_runc"
)

echo "test-kvm: building the tests"
built=$(cargo test --locked --workspace --no-run --message-format=json |
    grep -o '"executable":"[^"]*"' | cut -d'"' -f4)

mkdir -p target
failed=()
for suite in "${suites[@]}"; do
    read -r -d '' -a words <<<"$suite" || true
    name=${words[0]} package=${words[1]} tests=("${words[@]:2}")
    binary=$(grep "/deps/$name-" <<<"$built" || true)
    [ -x "$binary" ] || { echo "test-kvm: cargo built no $name test binary" >&2; exit 1; }
    echo "test-kvm: $name on hull-vmm, in the lab (${tests[*]:-all tests})"
    # An L1 the emulator wedged (exit 75, docs/kvm-lab.md) says nothing
    # about the tests: the suite runs once more, from the start, and what
    # that run says counts.
    for attempt in 1 2; do
        set +e
        # --exact: each name is a whole test name, not a pattern.
        (cd "$package" && ../scripts/kvm-lab.sh --timeout 1500 \
            --env HULL_TEST_HYPERVISOR --env HULL_TEST_AGENT_TIMEOUT --env HULL_TEST_KERNEL \
            --env HULL_TEST_INITRD --env HULL_TEST_ROOTFS -- \
            "$binary" --test-threads=2 --exact "${tests[@]}") 2>&1 | tee -a target/test.log
        status=${PIPESTATUS[0]}
        set -e
        if [ "$status" = 75 ] && [ "$attempt" = 1 ]; then
            echo "test-kvm: the emulator wedged L1 during $name; running $name again" | tee -a target/test.log
            continue
        fi
        [ "$status" = 0 ] || failed+=("$name")
        break
    done
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "test-kvm: FAILED in the lab: ${failed[*]}" >&2
    exit 1
fi
echo "test-kvm: all suites passed on hull-vmm"
