#!/usr/bin/env python3
"""Benchmark: CPU cost of one metrics collection pass with N running VMs (default 50, 128 MiB each).

The controller's CPU time is measured over a window twice, on the same VMs: once with the collector
effectively idle (FASTVM_METRICS_INTERVAL=3600) and once collecting every 10 s; the difference per
pass is the collector's cost. Guests are paused after they start (QMP `stop`) so fifty emulated CPUs
do not starve the measurement; a pass reads the same things from a paused guest as from a busy one.

usage: tests/bench/metrics_collector.py [--vms N] [--window SECONDS]
Needs release binaries (cargo build --release). Talks only to 127.0.0.1 and to unix sockets.
"""
import argparse, json, os, shutil, socket, sys, tempfile, time

from common import FASTVM, api, server

INTERVAL = 10


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def qmp(path, command):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rwb")
    f.readline()
    for cmd in ("qmp_capabilities", command):
        f.write(json.dumps({"execute": cmd}).encode() + b"\n")
        f.flush()
        while b'"return"' not in f.readline():
            pass
    s.close()


def measure(data, interval, window):
    with server(data, with_process=True, FASTVM_METRICS_INTERVAL=str(interval)) as (base, token, proc):
        time.sleep(3)  # re-adoption and the first pass
        before = cpu_seconds(proc.pid)
        time.sleep(window)
        return cpu_seconds(proc.pid) - before


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--window", type=int, default=60)
    args = ap.parse_args()
    if not os.path.exists(FASTVM):
        sys.exit("missing target/release/fastvm: cargo build --release")
    data = tempfile.mkdtemp(prefix="fvmetrics-", dir="/var/tmp")
    ids = []
    try:
        with server(data, FASTVM_METRICS_INTERVAL="3600") as (base, token):
            for i in range(args.vms):
                vm = api(base, "POST", "/api/vms", token, {"name": f"tiny-{i}", "memory": 128, "cpus": 1, "disk_size": 1})["vm"]
                api(base, "POST", f"/api/vms/{vm['id']}/start", token)
                qmp(os.path.join(data, "run", vm["id"], "qmp.sock"), "stop")
                ids.append(vm["id"])
        idle = measure(data, 3600, args.window)
        collecting = measure(data, INTERVAL, args.window)
        passes = args.window / INTERVAL
        per_pass = max(collecting - idle, 0.0) / passes
        print(f"Metrics collector benchmark ({args.vms} running VMs, {args.window} s windows)")
        print(f"  controller CPU, collector idle     : {idle:6.2f} s")
        print(f"  controller CPU, collecting every {INTERVAL} s: {collecting:6.2f} s")
        print(f"  CPU per collection pass            : {per_pass * 1000:6.1f} ms")
        print(f"  share of one core at a {INTERVAL} s interval : {per_pass / INTERVAL * 100:6.2f} %   (goal < 2 %)")
    finally:
        with server(data) as (base, token):
            for vm_id in ids:
                try:
                    api(base, "POST", f"/api/vms/{vm_id}/stop?force=true", token)
                except OSError:
                    pass
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
