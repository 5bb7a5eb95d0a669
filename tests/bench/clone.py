#!/usr/bin/env python3
"""Benchmark: copy-on-write clone time through the API for a VM with 1 GB and with 20 GB of disk
allocated (qcow2 preallocation=falloc: every cluster allocated, no data written). The goal is a flat
cost, independent of the disk's size. Then the full copy a VM with snapshots gets (1 GiB of data
written, one snapshot), against `qemu-img convert` of the same disk, alternating.

usage: tests/bench/clone.py [--runs N]      (needs target/release/fastvm: cargo build --release)
Talks only to 127.0.0.1.
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time

from common import FASTVM, api, server


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not os.path.exists(FASTVM):
        sys.exit("missing target/release/fastvm: cargo build --release")
    data = tempfile.mkdtemp(prefix="fvclone-", dir="/var/tmp")
    results = {}
    try:
        with server(data) as (base, token):
            for size in (1, 20):
                times = []
                for i in range(args.runs):
                    vm = api(base, "POST", "/api/vms", token, {"name": f"src{size}-{i}", "memory": 256, "cpus": 1,
                                                               "disk_size": size})["vm"]
                    disk = os.path.join(data, "vms", vm["id"], "disk0.qcow2")
                    os.makedirs(os.path.dirname(disk), exist_ok=True)
                    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=falloc", disk,
                                    f"{size}G"], check=True)
                    t0 = time.monotonic()
                    clone = api(base, "POST", f"/api/vms/{vm['id']}/clone", token, {"name": f"c{size}-{i}"})["vm"]
                    times.append(time.monotonic() - t0)
                    for vid in (clone["id"], vm["id"]):
                        api(base, "DELETE", f"/api/vms/{vid}", token)
                results[size] = times
            full, convert = [], []
            vm = api(base, "POST", "/api/vms", token, {"name": "full", "memory": 256, "cpus": 1, "disk_size": 2})["vm"]
            disk = os.path.join(data, "vms", vm["id"], "disk0.qcow2")
            os.makedirs(os.path.dirname(disk), exist_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "2G"], check=True)
            subprocess.run(["qemu-io", "-c", "write -P 0xab 0 1G", disk], check=True, stdout=subprocess.DEVNULL)
            api(base, "POST", f"/api/vms/{vm['id']}/snapshots", token, {"name": "s"})
            for i in range(args.runs):
                t0 = time.monotonic()
                clone = api(base, "POST", f"/api/vms/{vm['id']}/clone", token, {"name": f"full{i}"})["vm"]
                full.append(time.monotonic() - t0)
                api(base, "DELETE", f"/api/vms/{clone['id']}", token)
                out = os.path.join(data, "convert.qcow2")
                t0 = time.monotonic()
                subprocess.run(["qemu-img", "convert", "-O", "qcow2", disk, out], check=True)
                convert.append(time.monotonic() - t0)
                os.remove(out)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    print(f"Clone benchmark ({args.runs} runs each, medians, API round trip included)")
    for size, times in results.items():
        print(f"  {size:>2} GB allocated: {statistics.median(times) * 1000:7.1f} ms")
    f, c = statistics.median(full), statistics.median(convert)
    print(f"Full copy of a VM with a snapshot (1 GiB of data), medians:")
    print(f"  API clone        : {f:6.2f} s   ({1024 / f:6.1f} MiB/s)")
    print(f"  qemu-img convert : {c:6.2f} s   ({1024 / c:6.1f} MiB/s)   API/convert = {f / c:.2f}")


if __name__ == "__main__":
    main()
