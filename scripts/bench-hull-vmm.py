#!/usr/bin/env python3
"""Start-up time and memory of hull-vmm with the PVH test guest.

    scripts/bench-hull-vmm.py [HULL_VMM] [RUNS]

Builds vmm/tests/payload/pvh.S, then runs hull-vmm RUNS times (128 MiB
guest) and reports: the time from exec to the guest's first serial byte
(the guest's first instruction is a few instructions before it), the whole
run, and the VMM's peak RSS (the guest touches a few pages of its RAM, so
this is the VMM's own memory). Needs gcc and GNU time (/usr/bin/time).
"""
import os, resource, statistics, subprocess, sys, tempfile, time

here = os.path.dirname(os.path.abspath(__file__))
vmm = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "target", "release", "hull-vmm")
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
payload = os.path.join(here, "..", "vmm", "tests", "payload")

with tempfile.TemporaryDirectory() as tmp:
    guest = os.path.join(tmp, "pvh")
    subprocess.run(["gcc", "-nostdlib", "-static", "-no-pie", "-Wl,-T," + os.path.join(payload, "payload.ld"),
                    "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments", "-o", guest,
                    os.path.join(payload, "pvh.S")], check=True)
    first, total, rss = [], [], []
    for _ in range(runs):
        log = os.path.join(tmp, "serial.log")
        if os.path.exists(log):
            os.remove(log)
        start = time.perf_counter()
        # GNU time reports the VMM's own peak RSS; a child forked straight
        # from Python would carry Python's peak over exec.
        rss_file = os.path.join(tmp, "rss")
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file, vmm, "--kernel", guest,
                                 "--memory-mib", "128", "--serial-log", log, "--pvm-capable"],
                                stderr=subprocess.DEVNULL)
        while not (os.path.exists(log) and os.path.getsize(log) > 0):
            time.sleep(0.0002)
        first.append(time.perf_counter() - start)
        if proc.wait() != 0:
            sys.exit("hull-vmm failed")
        total.append(time.perf_counter() - start)
        rss.append(int(open(rss_file).read().split()[-1]))

ms = lambda xs: "median %.1f ms, min %.1f ms, max %.1f ms" % (
    statistics.median(xs) * 1000, min(xs) * 1000, max(xs) * 1000)
print(f"{runs} runs of {vmm}")
print("exec -> first guest serial byte:", ms(first))
print("whole run (boot, guest reset, tear-down):", ms(total))
print("peak RSS: median %d KiB, max %d KiB" % (statistics.median(rss), max(rss)))
