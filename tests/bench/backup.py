#!/usr/bin/env python3
"""Benchmark: backup and restore throughput through the API (stopped VM, 1 GiB of incompressible
data on its disk) against `qemu-img convert` copying the same disk, in one run.

usage: tests/bench/backup.py [--runs N] [--mib M]   (needs target/release/fastvm: cargo build --release)
Talks only to 127.0.0.1.
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time

from common import FASTVM, api, server


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=1024)
    args = ap.parse_args()
    if not os.path.exists(FASTVM):
        sys.exit("missing target/release/fastvm: cargo build --release")
    data = tempfile.mkdtemp(prefix="fvbackup-", dir="/var/tmp")
    convert, backup, restore = [], [], []
    try:
        with server(data) as (base, token):
            vm = api(base, "POST", "/api/vms", token, {"name": "bench", "memory": 256, "cpus": 1, "disk_size": 4})["vm"]
            disk = os.path.join(data, "vms", vm["id"], "disk0.qcow2")
            os.makedirs(os.path.dirname(disk), exist_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "4G"], check=True)
            noise = os.path.join(data, "noise.bin")
            with open(noise, "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(1 << 20))
            subprocess.run(["qemu-io", "-c", f"write -s {noise} 0 {args.mib}M", disk], check=True,
                           stdout=subprocess.DEVNULL)
            os.unlink(noise)
            for i in range(args.runs):
                out = os.path.join(data, f"convert-{i}.qcow2")
                t0 = time.monotonic()
                subprocess.run(["qemu-img", "convert", "-O", "qcow2", disk, out], check=True)
                convert.append(time.monotonic() - t0)
                os.unlink(out)
                t0 = time.monotonic()
                b = api(base, "POST", f"/api/vms/{vm['id']}/backup", token)
                backup.append(time.monotonic() - t0)
                t0 = time.monotonic()
                r = api(base, "POST", f"/api/backups/{b['id']}/restore", token, {"new_name": f"r{i}"})
                restore.append(time.monotonic() - t0)
                api(base, "DELETE", f"/api/vms/{r['vm']['id']}", token)
                api(base, "DELETE", f"/api/backups/{b['id']}", token)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    mib = args.mib
    rate = lambda xs: mib / statistics.median(xs)
    print(f"Backup benchmark ({args.runs} runs, {mib} MiB of incompressible data, medians)")
    print(f"  qemu-img convert : {rate(convert):7.1f} MiB/s")
    print(f"  API backup       : {rate(backup):7.1f} MiB/s   ({rate(backup) / rate(convert):.2f}x qemu-img convert)")
    print(f"  API restore      : {rate(restore):7.1f} MiB/s")


if __name__ == "__main__":
    main()
