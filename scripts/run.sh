#!/usr/bin/env bash
# Quick start: installs what is missing (QEMU, OVMF, swtpm, the dashboard's npm packages), builds Fast VM
# and starts the dashboard
# on http://localhost:8000 with the embedded defaults (process runtime, SQLite in ./data, admin/admin).
# Any FASTVM_* variable (see README) may be set before running it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_vm_tools
ensure_rust
ensure_dashboard
log "building (release)"
cargo build --release --quiet --bin fastvm --bin vmrunner
log "starting Fast VM on ${FASTVM_LISTEN:-0.0.0.0:8000} (data in ${FASTVM_DATA_DIR:-./data})"
exec target/release/fastvm serve "$@"
