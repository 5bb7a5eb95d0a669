#!/usr/bin/env python3
"""Benchmark: backup and restore throughput through the API (stopped VM, 1 GiB of incompressible
data on its disk) against `qemu-img convert` copying the same disk, in one run.

usage: tests/bench/backup.py [--runs N] [--mib M]   (needs target/release/fastvm: cargo build --release)
Talks only to 127.0.0.1.
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def api(base, method, path, token=None, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read() or b"null")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=1024)
    args = ap.parse_args()
    fastvm = os.path.join(ROOT, "target/release/fastvm")
    if not os.path.exists(fastvm):
        sys.exit("missing target/release/fastvm: cargo build --release")
    data = tempfile.mkdtemp(prefix="fvbackup-", dir="/var/tmp")
    env = dict(os.environ, FASTVM_DATA_DIR=data, FASTVM_BCRYPT_COST="4", FASTVM_LOG_FORMAT="json")
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    server = subprocess.Popen([fastvm, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    convert, backup, restore = [], [], []
    try:
        for _ in range(200):
            try:
                api(base, "GET", "/api/health"); break
            except OSError:
                time.sleep(0.05)
        token = api(base, "POST", "/api/auth/login", body={"username": "admin", "password": "admin"})["access_token"]
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
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)
    mib = args.mib
    rate = lambda xs: mib / statistics.median(xs)
    print(f"Backup benchmark ({args.runs} runs, {mib} MiB of incompressible data, medians)")
    print(f"  qemu-img convert : {rate(convert):7.1f} MiB/s")
    print(f"  API backup       : {rate(backup):7.1f} MiB/s   ({rate(backup) / rate(convert):.2f}x qemu-img convert)")
    print(f"  API restore      : {rate(restore):7.1f} MiB/s")


if __name__ == "__main__":
    main()
