#!/usr/bin/env python3
"""Benchmark: latency of GET /api/vms/{id}/screenshot?width=320 with 10 viewers asking at once (a
dashboard full of open tabs), against QMP `screendump` straight on the VM's monitor socket (the
best any front end of QEMU can do: a dump per request), in one run on the test guest.

usage: tests/bench/screenshot.py [--rounds N]   (needs target/release/fastvm: cargo build --release)
Talks only to 127.0.0.1 and to the VM's own unix sockets.
"""
import argparse, json, os, shutil, socket, statistics, sys, tempfile, threading, time, urllib.request

from common import VMRUNNER, api, server

ISO = os.environ.get("FASTVM_TEST_GUEST_ISO", "/var/cache/fastvm/guest/fastvm-test-guest.iso")
VIEWERS = 10


def wait_ready(run_dir, timeout=240):
    deadline = time.monotonic() + timeout
    log = os.path.join(run_dir, "serial.log")
    while time.monotonic() < deadline:
        if os.path.exists(log) and b"FASTVM-GUEST-READY" in open(log, "rb").read():
            return
        time.sleep(0.5)
    sys.exit("guest never became READY")


def qmp_screendump(sock_path, target):
    """One screendump over a fresh QMP connection, as a client of QEMU would do it."""
    s = socket.socket(socket.AF_UNIX); s.connect(sock_path)
    f = s.makefile("rwb")
    f.readline()
    for cmd in ({"execute": "qmp_capabilities"}, {"execute": "screendump", "arguments": {"filename": target, "format": "png"}}):
        f.write(json.dumps(cmd).encode() + b"\n"); f.flush()
        while True:
            reply = json.loads(f.readline())
            if "return" in reply or "error" in reply:
                break
    s.close()


def viewers_at_once(fn):
    """Runs fn in VIEWERS threads released together; returns each one's latency in ms."""
    times, gate = [], threading.Barrier(VIEWERS)
    def one():
        gate.wait(); t0 = time.monotonic(); fn(); times.append((time.monotonic() - t0) * 1000)
    threads = [threading.Thread(target=one) for _ in range(VIEWERS)]
    for t in threads: t.start()
    for t in threads: t.join()
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    data = tempfile.mkdtemp(prefix="fvshot-", dir="/var/tmp")
    run = tempfile.mkdtemp(prefix="fvr-", dir="/tmp")
    api_ms, raw_ms = [], []
    try:
        with server(data, FASTVM_ACCEL="tcg", FASTVM_VMRUNNER=VMRUNNER, FASTVM_RUN_DIR=run,
                    FASTVM_ISO_DIRS=os.path.dirname(ISO)) as (base, token):
            vm = api(base, "POST", "/api/vms", token, {"name": "shot", "memory": 256, "cpus": 1, "disk_size": 1,
                     "firmware": "bios", "iso_path": ISO, "boot_order": ["cdrom", "disk"]})["vm"]
            api(base, "POST", f"/api/vms/{vm['id']}/start", token)
            run_dir = os.path.join(run, vm["id"])
            wait_ready(run_dir)
            url = f"{base}/api/vms/{vm['id']}/screenshot?width=320"
            def fetch():
                req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
                with urllib.request.urlopen(req) as r:
                    assert r.read(8) == b"\x89PNG\r\n\x1a\n"
            dump = os.path.join(run_dir, ".bench.png")
            for _ in range(args.rounds):
                time.sleep(3.2)  # past the cache: every round starts with a fresh dump
                api_ms += viewers_at_once(fetch)
                raw_ms += viewers_at_once(lambda: qmp_screendump(os.path.join(run_dir, "qmp.sock"), dump))
            api(base, "POST", f"/api/vms/{vm['id']}/stop?force=true", token)
    finally:
        shutil.rmtree(data, ignore_errors=True); shutil.rmtree(run, ignore_errors=True)
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(len(xs) * p))]
    print(f"Screenshot benchmark ({VIEWERS} viewers at once, {args.rounds} rounds, TCG guest)")
    print(f"  API (?width=320, shared dump) : median {statistics.median(api_ms):7.1f} ms, p90 {q(api_ms, 0.9):7.1f} ms")
    print(f"  QMP screendump, one per viewer: median {statistics.median(raw_ms):7.1f} ms, p90 {q(raw_ms, 0.9):7.1f} ms")


if __name__ == "__main__":
    main()
