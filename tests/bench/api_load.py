#!/usr/bin/env python3
"""Benchmark: `GET /api/vms` with 1000 VMs in the database, from one client (latency) and under
200 concurrent connections (wrk: throughput, p99, errors), against nginx serving the very same
bytes as a static file on the same machine in the same run (the floor of answering with ~700 KB).
Also the controller's RSS and CPU at idle and under that load.

usage: tests/bench/api_load.py [--vms N] [--seconds S] [--check]
  --check   fail (exit 1) on any error or non-2xx answer under load; what CI runs, with FASTVM_BIN
            pointing at a debug build (its timings then mean little)
Needs target/release/fastvm (cargo build --release), wrk and nginx (apt). Talks only to 127.0.0.1.
"""
import argparse, http.client, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor

from common import FASTVM, api, server

CONNECTIONS = 200


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    return port


def latencies(port, path, token, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": "Bearer " + token} if token else {}
    out, body = [], b""
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers)
        r = conn.getresponse(); body = r.read()
        out.append(time.perf_counter() - t0)
        if r.status != 200:
            sys.exit(f"GET {path}: {r.status}")
    conn.close()
    return out, body


def wrk(port, path, token, seconds):
    """requests/s, p50 ms, p99 ms, errors (socket errors + non-2xx) of wrk with CONNECTIONS connections."""
    cmd = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if token:
        cmd += ["-H", "Authorization: Bearer " + token]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return rps, ms("50"), ms("99"), errors


def usage(pid):
    """RSS in MiB and CPU seconds (user + system) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_serving(body, root):
    os.makedirs(os.path.join(root, "www"), mode=0o755, exist_ok=True)
    with open(os.path.join(root, "www", "vms.json"), "wb") as f:
        f.write(body)
    os.chmod(os.path.join(root, "www", "vms.json"), 0o644)
    port = free_port()
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 2; pid {root}/nginx.pid; error_log {root}/error.log; daemon off;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; root {root}/www; location / {{ default_type application/json; }} }} }}
""")
    return port, subprocess.Popen(["nginx", "-c", conf], stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    for tool in ("wrk",) + (() if args.check else ("nginx",)):
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: apt-get install {tool}")
    if not os.path.exists(FASTVM):
        sys.exit(f"missing {FASTVM}: cargo build --release")
    data = tempfile.mkdtemp(prefix="fvload-", dir="/var/tmp")
    try:
        with server(data, with_process=True) as (base, token, proc):
            port = int(base.rsplit(":", 1)[1])
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: api(base, "POST", "/api/vms", token,
                                            {"name": f"load-{i:04}", "memory": 256, "cpus": 1, "disk_size": 1}),
                              range(args.vms)))
            time.sleep(2)
            idle_rss, cpu0 = usage(proc.pid)
            time.sleep(5)
            idle_cpu = (usage(proc.pid)[1] - cpu0) / 5
            single, body = latencies(port, "/api/vms", token, 300)
            if len(json.loads(body)) != args.vms:
                sys.exit(f"the list holds {len(json.loads(body))} VMs, not {args.vms}")
            cpu0 = usage(proc.pid)[1]
            rps, p50, p99, errors = wrk(port, "/api/vms", token, args.seconds)
            load_rss, cpu1 = usage(proc.pid)
            load_cpu = (cpu1 - cpu0) / args.seconds
            peer = None
            if not args.check:
                # Readable by nginx's unprivileged workers, unlike the controller's private data dir.
                www = tempfile.mkdtemp(prefix="fvload-nginx-", dir="/var/tmp")
                os.chmod(www, 0o755)
                nginx_port, nginx = nginx_serving(body, www)
                try:
                    time.sleep(0.5)
                    peer_single, _ = latencies(nginx_port, "/vms.json", None, 300)
                    peer = (peer_single, wrk(nginx_port, "/vms.json", None, args.seconds))
                finally:
                    nginx.terminate(); nginx.wait()
                    shutil.rmtree(www, ignore_errors=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)

    def q(xs, p):
        return statistics.quantiles(xs, n=100)[p - 1] * 1000

    print(f"GET /api/vms with {args.vms} VMs ({len(body) / 1024:.0f} KiB), {CONNECTIONS} connections for {args.seconds} s")
    print(f"{'':28}{'fastvm':>12}{'nginx (same bytes)':>22}")
    rows = [("one client p50 (ms)", q(single, 50), peer and q(peer[0], 50)),
            ("one client p99 (ms)", q(single, 99), peer and q(peer[0], 99)),
            (f"{CONNECTIONS} conns requests/s", rps, peer and peer[1][0]),
            (f"{CONNECTIONS} conns p50 (ms)", p50, peer and peer[1][1]),
            (f"{CONNECTIONS} conns p99 (ms)", p99, peer and peer[1][2]),
            ("errors", errors, peer and peer[1][3])]
    for label, ours, theirs in rows:
        print(f"  {label:26}{ours:12.1f}{'' if theirs is None else f'{theirs:22.1f}'}")
    print(f"controller: idle RSS {idle_rss:.1f} MiB, idle CPU {idle_cpu * 100:.1f}%; "
          f"under load RSS {load_rss:.1f} MiB, CPU {load_cpu * 100:.0f}% (of one core)")
    if args.check and errors:
        sys.exit(f"{errors} errors under {CONNECTIONS} connections")


if __name__ == "__main__":
    main()
