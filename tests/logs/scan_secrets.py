#!/usr/bin/env python3
"""Searches the controller logs a test run kept (FASTVM_TEST_LOGS) for credentials.

No log line may hold a session token, a console ticket, a SPICE password, a user's password, a
password hash or the JWT secret. Secrets are found by their shape (every one the controller makes
has a distinctive one) and, for each server's JWT secret (kept next to its log as `*.secrets`),
verbatim. `--self-test` checks that every shape is found and that ordinary lines pass.

Usage: scan_secrets.py <dir> | --self-test
"""

import pathlib
import re
import sys
import tempfile

SHAPES = {
    # HS256 session tokens.
    "a session token (JWT)": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    "a password hash (bcrypt)": re.compile(r"\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}"),
    # Console tickets and JWT secrets: 256 random bits, hex. A backup chunk's name has the same
    # shape (the SHA-256 of its data, no secret): named as one ("chunk <name>", a path in chunks/).
    "a console ticket or secret (64 hex digits)": re.compile(
        r"(?<![0-9A-Za-z])(?<!chunk )(?<!chunks/[0-9a-f][0-9a-f]/)[0-9a-f]{64}(?![0-9A-Za-z])"
    ),
    # SPICE passwords: 24 random letters and digits (mixed case, so not an id or a word).
    "a SPICE password (24 random letters and digits)": re.compile(
        r"(?<![0-9A-Za-z])(?=[0-9A-Za-z]*[a-z])(?=[0-9A-Za-z]*[A-Z])(?=[0-9A-Za-z]*[0-9])[0-9A-Za-z]{24}(?![0-9A-Za-z])"
    ),
    # A credential by its name: in a query string, a form or JSON.
    "a named credential": re.compile(
        r"""(?ix)
        (?:password|passwd|new_password|current_password|token|access_token|ticket|secret)
        (?:=|"\s*:\s*"|\\"\s*:\s*\\")
        (?!REDACTED|\*|&|"|\\"|\s|$)
        """
    ),
}


def scan(directory: pathlib.Path) -> list[str]:
    secrets = {}
    for path in sorted(directory.glob("*.secrets")):
        value = path.read_text(errors="replace").strip()
        if value:
            secrets[value] = path.name
    found = []
    logs = sorted(directory.glob("*.log"))
    for log in logs:
        with log.open(errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                for what, shape in SHAPES.items():
                    match = shape.search(line)
                    if match:
                        found.append(f"{log.name}:{number}: {what}: {line.strip()[:300]}")
                for value, source in secrets.items():
                    if value in line:
                        found.append(f"{log.name}:{number}: the JWT secret of {source}")
    print(f"scan_secrets: {len(logs)} logs, {sum(1 for _ in secrets)} secrets, {len(found)} findings")
    return found


def self_test() -> int:
    planted = {
        "jwt": 'token issued eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlc2lnbmF0dXJl',
        "bcrypt": "hash $2b$04$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01",
        "ticket": "uri=/ws/vnc/x?ticket=" + "ab12" * 16,
        "spice": 'set_password {"password": "aB3dE5gH7jK9mN1pQ3sT5vW7"} done',
        "query": "GET /api/vms?token=abc",
        "json": '{"fields":{"body":"{\\"password\\": \\"hunter22\\"}"}}',
        "secret": "the key is SECRETVALUE",
    }
    clean = [
        '{"fields":{"message":"request","uri":"/ws/vnc/x?ticket=REDACTED"},"vm_id":"3f2a9c0d4b1e4f6a8c7d5e3b2a1f0e9d"}',
        "mac 52:54:00:12:34:56 path /var/lib/fastvm/vms/3f2a9c0d4b1e4f6a8c7d5e3b2a1f0e9d/disk0.qcow2",
        "job fastvm-1a2b3c4d snapshot fastvm-3f2a9c0d4b1e4f6a8c7d5e3b2a1f0e9d removed; password changed for admin",
        '"password_changed": true, "must_change_password": false, token expired',
        "WARN verification error=chunk " + "4b" * 32 + " is damaged: its data does not match its name",
        "writing /var/lib/fastvm/backups/chunks/4b/" + "4b" * 32 + ": No space left on device",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        directory = pathlib.Path(tmp)
        (directory / "clean.log").write_text("\n".join(clean) + "\n")
        if found := scan(directory):
            print("self-test: ordinary lines were flagged:", *found, sep="\n  ")
            return 1
        (directory / "clean.secrets").write_text("SECRETVALUE\n")
        for name, line in planted.items():
            (directory / "clean.log").write_text("\n".join(clean + [line]) + "\n")
            if not scan(directory):
                print(f"self-test: a planted {name} went unseen: {line}")
                return 1
    print("self-test: every planted credential was found, no ordinary line was")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    directory = pathlib.Path(sys.argv[1])
    if not directory.is_dir() or not any(directory.glob("*.log")):
        print(f"scan_secrets: no logs in {directory}: nothing was kept, so nothing was checked", file=sys.stderr)
        return 1
    found = scan(directory)
    for line in found[:50]:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
