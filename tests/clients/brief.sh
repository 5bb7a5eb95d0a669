#!/usr/bin/env bash
# The brief's curl examples, verbatim, against a fresh controller on localhost:8000: every call
# answers 200 (the original's code for every success) and both VMs exist afterwards, the second
# with 4 vCPUs and 8 GiB whatever the size of this host.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/clients/common.sh

# The examples name ISOs under /path/to; they are made for the test when that directory is absent.
if [ ! -e /path/to ]; then
  mkdir -p /path/to
  EXTRA_CLEANUP='rm -rf /path/to; rmdir /path 2>/dev/null || true'
  : >/path/to/ubuntu.iso
  : >/path/to/win11.iso
  : >/path/to/virtio-win.iso
fi
export FASTVM_ISO_DIRS=/path/to
start_controller 127.0.0.1:8000

codes=$(mktemp)
# Every call the examples make goes through here, so its status is kept.
curl() {
  local out
  out=$(command curl -sS -w '\n%{http_code}' "$@")
  echo "${out##*$'\n'}" >>"$codes"
  printf '%s\n' "${out%$'\n'*}"
}

# ---- from the brief, verbatim ----
TOKEN=$(curl -s -X POST http://localhost:8000/api/auth/login \
  -H "Content-Type: application/json" \
  -d '{"username": "admin", "password": "admin"}' | jq -r '.access_token')

# VM con NAT (simple)
curl -X POST http://localhost:8000/api/vms \
  -H "Content-Type: application/json" \
  -H "Authorization: Bearer $TOKEN" \
  -d '{
    "name": "Ubuntu Server",
    "memory": 2048,
    "cpus": 2,
    "disk_size": 20,
    "iso_path": "/path/to/ubuntu.iso"
  }'

# VM con Bridge (acceso directo a la red)
curl -X POST http://localhost:8000/api/vms \
  -H "Content-Type: application/json" \
  -H "Authorization: Bearer $TOKEN" \
  -d '{
    "name": "Windows 11",
    "memory": 8192,
    "cpus": 4,
    "disk_size": 60,
    "iso_path": "/path/to/win11.iso",
    "secondary_iso_path": "/path/to/virtio-win.iso",
    "networks": [{"type": "bridge", "bridge_name": "br0"}],
    "boot_order": ["cdrom", "disk"]
  }'
# ---- end of the brief's examples ----

echo
mapfile -t got <"$codes"
rm -f "$codes"
[ "${#got[@]}" -eq 3 ] || { echo "expected 3 calls, saw ${#got[@]}" >&2; exit 1; }
for code in "${got[@]}"; do
  [ "$code" = 200 ] || { echo "a call answered $code, not 200: ${got[*]}" >&2; exit 1; }
done
vms=$(command curl -s http://localhost:8000/api/vms -H "Authorization: Bearer $TOKEN")
[ "$(jq -r '[.[] | .name] | sort | join(",")' <<<"$vms")" = "Ubuntu Server,Windows 11" ]
[ "$(jq -r '.[] | select(.name == "Windows 11") | "\(.cpus) \(.memory)"' <<<"$vms")" = "4 8192" ]
echo "brief examples: 3 calls, all 200; both VMs defined"
