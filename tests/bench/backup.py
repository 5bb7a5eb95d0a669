#!/usr/bin/env python3
"""Benchmark: backups through the API (stopped VM, 1 GiB of incompressible data on its disk), in one
run: a full backup and `qemu-img convert` copying the same disk (the peer), a backup with nothing
changed, ten backups with 1% changed before each (and the chunk store's size after them against
one full), and restore. Then the storage layers side by side on the same kind of disk: today's
`.tar.zst` archive against the chunk store (the `chunk_bench` example).

usage: tests/bench/backup.py [--runs N] [--mib M]
  (needs target/release/fastvm and target/release/examples/chunk_bench:
   cargo build --release -p controller --bin fastvm --example chunk_bench)
Talks only to 127.0.0.1.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

from common import FASTVM, ROOT, api, server

CHUNK_BENCH = os.path.join(ROOT, "target/release/examples/chunk_bench")


def du(path):
    total = 0
    for dirpath, _, names in os.walk(path):
        total += sum(os.path.getsize(os.path.join(dirpath, n)) for n in names)
    return total


def random_write(disk, at_mib, mib, scratch):
    noise = os.path.join(scratch, "noise.bin")
    with open(noise, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -s {noise} {at_mib}M {mib}M", disk], check=True,
                   stdout=subprocess.DEVNULL)
    os.unlink(noise)


def drop_bitmaps(disk):
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", disk], check=True,
                                     capture_output=True).stdout)
    for b in info.get("format-specific", {}).get("data", {}).get("bitmaps", []):
        subprocess.run(["qemu-img", "bitmap", "--remove", disk, b["name"]], check=True)


def timed(f):
    t0 = time.monotonic()
    out = f()
    return time.monotonic() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=1024)
    args = ap.parse_args()
    for path in (FASTVM, CHUNK_BENCH):
        if not os.path.exists(path):
            sys.exit(f"missing {path}: cargo build --release -p controller --bin fastvm --example chunk_bench")
    mib = args.mib
    data = tempfile.mkdtemp(prefix="fvbackup-", dir="/var/tmp")
    convert, full, unchanged, restore, ten = [], [], [], [], []
    try:
        with server(data) as (base, token):
            vm = api(base, "POST", "/api/vms", token, {"name": "bench", "memory": 256, "cpus": 1, "disk_size": 4})["vm"]
            disk = os.path.join(data, "vms", vm["id"], "disk0.qcow2")
            chunks = os.path.join(data, "backups", "chunks")
            os.makedirs(os.path.dirname(disk), exist_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "4G"], check=True)
            random_write(disk, 0, mib, data)
            backup = lambda: api(base, "POST", f"/api/vms/{vm['id']}/backup", token)
            for i in range(args.runs):
                out = os.path.join(data, f"convert-{i}.qcow2")
                secs, _ = timed(lambda: subprocess.run(["qemu-img", "convert", "-O", "qcow2", disk, out], check=True))
                convert.append(secs)
                os.unlink(out)
                # A full backup into an empty store, then one with nothing changed.
                drop_bitmaps(disk)
                secs, first = timed(backup)
                assert not first["incremental"], first
                full.append(secs)
                one_full = du(chunks)
                secs, second = timed(backup)
                assert second["incremental"] and second["bytes_read"] == 0, second
                unchanged.append(secs)
                secs, r = timed(lambda: api(base, "POST", f"/api/backups/{first['id']}/restore", token,
                                            {"new_name": f"r{i}"}))
                restore.append(secs)
                api(base, "DELETE", f"/api/vms/{r['vm']['id']}", token)
                # Ten backups, 1% of the data changed before each.
                taken = [first["id"], second["id"]]
                step = max(1, mib // 100)
                for k in range(10):
                    random_write(disk, (k * 97) % max(1, mib - step), step, data)
                    b = backup()
                    assert b["incremental"], b
                    taken.append(b["id"])
                ten.append(du(chunks) / one_full)
                for b in taken:
                    api(base, "DELETE", f"/api/backups/{b}", token)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    med = statistics.median
    rate = lambda xs: mib / med(xs)
    print(f"Backup benchmark through the API ({args.runs} runs, {mib} MiB of incompressible data, medians)")
    print(f"  qemu-img convert (peer)    : {rate(convert):7.1f} MiB/s")
    print(f"  full backup                : {rate(full):7.1f} MiB/s   ({rate(full) / rate(convert):.2f}x qemu-img convert)")
    print(f"  backup, nothing changed    : {med(unchanged):7.3f} s")
    print(f"  store after 12 backups, 1% changed before each of the last ten: {med(ten):.2f}x one full")
    print(f"  restore                    : {rate(restore):7.1f} MiB/s")
    print()
    sys.stdout.flush()
    subprocess.run([CHUNK_BENCH], check=True, env=dict(os.environ, CHUNK_BENCH_MIB=str(mib)))


if __name__ == "__main__":
    main()
