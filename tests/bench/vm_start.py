#!/usr/bin/env python3
"""Benchmark: time from "start" to QMP running and to guest READY, through the Fast VM API (process
and docker runtimes) versus raw qemu-system-x86_64 with the very same argv, in one run, on the test guest.

usage: tests/bench/vm_start.py [--runs N] [--accel tcg|kvm] [--firmware uefi|bios]
Needs release binaries (cargo build --release), the test guest ISO (scripts/test.sh builds it) and,
for docker, the vmrunner image (scripts/build-images.sh).
Talks only to 127.0.0.1 and to unix sockets in its own temporary directory.
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

from common import FASTVM, VMRUNNER, api, server

ISO = os.environ.get("FASTVM_TEST_GUEST_ISO", "/var/cache/fastvm/guest/fastvm-test-guest.iso")
READY = b"FASTVM-GUEST-READY"


def ready_count(run_dir):
    try:
        with open(os.path.join(run_dir, "serial.log"), "rb") as f:
            return f.read().count(READY)
    except FileNotFoundError:
        return 0


def wait_ready(run_dir, before, timeout=300):
    deadline = time.monotonic() + timeout
    while ready_count(run_dir) <= before:
        if time.monotonic() > deadline:
            sys.exit("guest never became READY")
        time.sleep(0.02)


def qmp(path, *commands):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rw")
    f.readline()
    for cmd in ("qmp_capabilities",) + commands:
        f.write(json.dumps({"execute": cmd}) + "\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                break
    s.close()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def bench_runtime(runtime, fastvm, vmrunner, args):
    """Times API starts on one runtime; for the process runtime also raw QEMU on the same argv."""
    data = tempfile.mkdtemp(prefix="fvbench-")
    out = {}
    try:
        with server(data, FASTVM_ACCEL=args.accel, FASTVM_RUNTIME=runtime, FASTVM_VMRUNNER=vmrunner,
                    FASTVM_ISO_DIRS=os.path.dirname(ISO), FASTVM_PORT_FORWARD_BIND="127.0.0.1") as (base, token):
            vm = api(base, "POST", "/api/vms", token, {"name": "bench", "memory": 256, "cpus": 1, "disk_size": 1,
                     "firmware": args.firmware, "iso_path": ISO, "boot_order": ["cdrom", "disk"]})["vm"]
            vid = vm["id"]
            run_dir = os.path.join(data, "run", vid)
            qmp_t, ready_t = [], []
            for _ in range(args.runs):
                before = ready_count(run_dir)
                t0 = time.monotonic()
                api(base, "POST", f"/api/vms/{vid}/start", token)
                qmp_t.append(time.monotonic() - t0)
                wait_ready(run_dir, before)
                ready_t.append(time.monotonic() - t0)
                api(base, "POST", f"/api/vms/{vid}/stop?force=true", token)
            out[runtime] = (qmp_t, ready_t)
            if runtime == "process":
                out["raw QEMU"] = bench_raw(vmrunner, run_dir, args.runs)
            api(base, "DELETE", f"/api/vms/{vid}?force=true", token)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return out


def bench_raw(vmrunner, run_dir, runs):
    argv = subprocess.run([vmrunner, "argv", os.path.join(run_dir, "vmrunner.json")], check=True,
                          capture_output=True, text=True).stdout.splitlines()
    qmp_t, ready_t = [], []
    for _ in range(runs):
        before = ready_count(run_dir)
        try:
            os.unlink(os.path.join(run_dir, "qmp.sock"))
        except FileNotFoundError:
            pass
        t0 = time.monotonic()
        qemu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                qmp(os.path.join(run_dir, "qmp.sock"), "cont"); break
            except OSError:
                time.sleep(0.02)
        qmp_t.append(time.monotonic() - t0)
        wait_ready(run_dir, before)
        ready_t.append(time.monotonic() - t0)
        qmp(os.path.join(run_dir, "qmp.sock"), "quit")
        qemu.wait(timeout=30)
    return qmp_t, ready_t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--accel", default="tcg")
    ap.add_argument("--firmware", default="uefi")
    ap.add_argument("--runtimes", default="process,docker", help="comma-separated: process, docker")
    args = ap.parse_args()
    fastvm, vmrunner = FASTVM, VMRUNNER
    for b in (fastvm, vmrunner, ISO):
        if not os.path.exists(b):
            sys.exit(f"missing {b}: run cargo build --release and scripts/test.sh first")

    results = {}
    for runtime in args.runtimes.split(","):
        results.update(bench_runtime(runtime, fastvm, vmrunner, args))
    print(f"VM start benchmark ({args.runs} runs each, accel={args.accel}, firmware={args.firmware}, medians)")
    names = [n for n in ("raw QEMU", "process", "docker") if n in results]
    print(f"{'':24}" + "".join(f"{n:>12}" for n in names) + "".join(f"{n + '/raw':>14}" for n in names[1:]))
    for i, label in enumerate(("start -> QMP running", "start -> guest READY")):
        raw = median(results["raw QEMU"][i])
        row = f"{label:24}" + "".join(f"{median(results[n][i]):11.3f}s" for n in names)
        row += "".join(f"{median(results[n][i]) / raw:14.2f}" for n in names[1:])
        print(row)


if __name__ == "__main__":
    main()
