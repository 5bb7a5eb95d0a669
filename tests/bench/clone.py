#!/usr/bin/env python3
"""Benchmark: copy-on-write clone time through the API for a VM with 1 GB and with 20 GB of disk
allocated (qcow2 preallocation=falloc: every cluster allocated, no data written). The goal is a flat
cost, independent of the disk's size.

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
    finally:
        shutil.rmtree(data, ignore_errors=True)
    print(f"Clone benchmark ({args.runs} runs each, medians, API round trip included)")
    for size, times in results.items():
        print(f"  {size:>2} GB allocated: {statistics.median(times) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
