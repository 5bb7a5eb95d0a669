#!/usr/bin/env python3
"""Benchmark: copy-on-write clone time through the API for a VM with 1 GB and with 20 GB of disk
allocated (qcow2 preallocation=falloc: every cluster allocated, no data written). The goal is a flat
cost, independent of the disk's size.

usage: tests/bench/clone.py [--runs N]      (needs target/release/fastvm: cargo build --release)
Talks only to 127.0.0.1.
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def api(base, method, path, token=None, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read() or b"null")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    fastvm = os.path.join(ROOT, "target/release/fastvm")
    if not os.path.exists(fastvm):
        sys.exit("missing target/release/fastvm: cargo build --release")
    data = tempfile.mkdtemp(prefix="fvclone-", dir="/var/tmp")
    env = dict(os.environ, FASTVM_DATA_DIR=data, FASTVM_BCRYPT_COST="4", FASTVM_LOG_FORMAT="json")
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    server = subprocess.Popen([fastvm, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    results = {}
    try:
        for _ in range(200):
            try:
                api(base, "GET", "/api/health"); break
            except OSError:
                time.sleep(0.05)
        token = api(base, "POST", "/api/auth/login", body={"username": "admin", "password": "admin"})["access_token"]
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
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)
    print(f"Clone benchmark ({args.runs} runs each, medians, API round trip included)")
    for size, times in results.items():
        print(f"  {size:>2} GB allocated: {statistics.median(times) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
