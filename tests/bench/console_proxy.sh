#!/usr/bin/env bash
# Console proxy benchmark: fastvm's /ws/vnc proxy vs a direct unix socket vs Python websockify
# relaying the same socket, in one run (see tests/bench/console_bench.rs).
# Needs QEMU and websockify (apt-get install websockify). Talks only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v websockify >/dev/null || { echo "websockify missing: apt-get install websockify" >&2; exit 1; }
cargo build -q --release --bin vmrunner
cargo build -q --release --bin fastvm
exec cargo run -q --release --example console_bench
