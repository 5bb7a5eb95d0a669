"""Shared by the benchmark scripts: calling the API, and a `fastvm serve` on a loopback port."""
import contextlib, json, os, signal, socket, subprocess, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FASTVM = os.environ.get("FASTVM_BIN") or os.path.join(ROOT, "target/release/fastvm")
VMRUNNER = os.path.join(ROOT, "target/release/vmrunner")


def api(base, method, path, token=None, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read() or b"null")


@contextlib.contextmanager
def server(data_dir, with_process=False, **env_vars):
    """Yields (base URL, admin token) of a release `fastvm serve` on 127.0.0.1 with `data_dir`
    (and its Popen, with `with_process`)."""
    env = dict(os.environ, FASTVM_DATA_DIR=data_dir, FASTVM_BCRYPT_COST="4", FASTVM_LOG_FORMAT="json", **env_vars)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    proc = subprocess.Popen([FASTVM, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                api(base, "GET", "/api/health"); break
            except OSError:
                time.sleep(0.05)
        token = api(base, "POST", "/api/auth/login", body={"username": "admin", "password": "admin"})["access_token"]
        yield (base, token, proc) if with_process else (base, token)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
