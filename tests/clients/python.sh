#!/usr/bin/env bash
# An API client generated from openapi/openapi.json by a real generator (openapi-python-client, from
# PyPI) signs in, creates a VM, starts it (a real QEMU), stops and deletes it.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
. tests/clients/common.sh

generator=$(ensure_py_tool openapi-python-client openapi-python-client)
venv=$(dirname "$(dirname "$generator")")
out=target/clients/fastvm_client
rm -rf "$out"
mkdir -p "$(dirname "$out")"
config=$(mktemp)
# No formatter runs over the generated code (ruff is not installed for it).
echo 'post_hooks: []' >"$config"
if ! "$generator" generate --path openapi/openapi.json --output-path "$out" --meta none --config "$config" \
  >"$config.log" 2>&1 || [ ! -f "$out/__init__.py" ]; then
  cat "$config.log" >&2
  exit 1
fi
rm -f "$config" "$config.log"
# What the generated package imports.
"$venv/bin/pip" install -q httpx attrs python-dateutil >&2

start_controller 127.0.0.1:18765
PYTHONPATH=$out/.. "$venv/bin/python" tests/clients/drive.py "http://127.0.0.1:18765" "$(basename "$out")"
