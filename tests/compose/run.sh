#!/usr/bin/env bash
# `docker compose up -d --build` end to end on an engine that reaches no registry: the images come
# from a debootstrapped Debian base and binaries built here (the Dockerfile's *-prebuilt targets).
# The stack comes up, the test guest boots in the docker runtime, its serial console is read through
# the controller's relay, and the stack goes down leaving no container behind.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

ensure_dockerd
if docker compose version >/dev/null 2>&1; then
  compose() { docker compose "$@"; }
else
  command -v docker-compose >/dev/null 2>&1 || ensure_packages docker-compose
  compose() { docker-compose "$@"; }
fi
iso=${FASTVM_TEST_GUEST_ISO:-/var/cache/fastvm/guest/fastvm-test-guest.iso}
[ -f "$iso" ] || { echo "no test guest ISO at $iso (tests/guest/build-test-guest.sh makes it)" >&2; exit 1; }
python=$(dirname "$(ensure_py_tool websockets websockets)")/python

# The base and the binaries, as on any offline host (builds the images once, from the same targets).
bash scripts/build-images.sh --profile debug --controller
if docker image inspect debian:bookworm-slim >/dev/null 2>&1; then base=debian:bookworm-slim; else base=fastvm/debian:bookworm; fi

data=$(mktemp -d /tmp/fastvm-compose.XXXXXX)
address=127.0.0.1:18800
export FASTVM_DATA_DIR=$data FASTVM_PUBLISH=$address FASTVM_BASE_IMAGE=$base FASTVM_ACCEL=tcg \
  FASTVM_CONTROLLER_TARGET=controller-prebuilt FASTVM_VMRUNNER_TARGET=vmrunner-prebuilt \
  FASTVM_PORT_FORWARD_BIND=127.0.0.1 COMPOSE_PROJECT_NAME=fastvm-e2e
cleanup() {
  local status=$?
  [ "$status" -eq 0 ] || compose logs controller 2>&1 | tail -n 40 >&2 || true
  compose down --remove-orphans >/dev/null 2>&1 || true
  [ -z "${id:-}" ] || docker rm -f "fastvm-$id" >/dev/null 2>&1 || true
  rm -rf "$data"
  exit "$status"
}
trap cleanup EXIT

log "docker compose up -d --build"
compose up -d --build
for _ in $(seq 1 150); do
  curl -sf "http://$address/api/health" >/dev/null 2>&1 && break
  sleep 0.2
done
mkdir -p "$data/images"
cp "$iso" "$data/images/test-guest.iso"

api() { # method path [json]
  curl -sS -X "$1" "http://$address$2" -H "Authorization: Bearer ${TOKEN:-}" -H 'Content-Type: application/json' \
    ${3:+-d "$3"}
}
TOKEN=$(curl -sS -X POST "http://$address/api/auth/login" -H 'Content-Type: application/json' \
  -d '{"username": "admin", "password": "admin"}' | jq -r .access_token)
if [ -z "$TOKEN" ] || [ "$TOKEN" = null ]; then echo "no token" >&2; exit 1; fi
vm=$(api POST /api/vms "{\"name\": \"compose guest\", \"memory\": 256, \"cpus\": 1, \"disk_size\": 1, \
  \"iso_path\": \"$data/images/test-guest.iso\", \"boot_order\": [\"cdrom\"], \"firmware\": \"bios\"}")
id=$(jq -r .vm.id <<<"$vm")
export id
[ "$(jq -r .vm.runtime <<<"$vm")" = docker ] || { echo "not the docker runtime: $vm" >&2; exit 1; }
started=$(api POST "/api/vms/$id/start")
[ "$(jq -r .vm.status <<<"$started")" = running ] || { echo "start: $started" >&2; exit 1; }
[ -n "$(docker ps -q --filter "name=fastvm-$id")" ] || { echo "no container for the VM" >&2; exit 1; }

# The guest through the controller's relay: its serial console until the guest says it is ready.
ws=$(api GET "/api/vms/$id/serial" | jq -r .ws_url)
"$python" - "ws://$address$ws" <<'PY'
import sys, time
from websockets.sync.client import connect
seen, deadline = b"", time.time() + 120
with connect(sys.argv[1], open_timeout=10) as ws:
    while b"FASTVM-GUEST-READY" not in seen:
        if time.time() > deadline:
            sys.exit("no FASTVM-GUEST-READY on the serial console: %r" % seen[-300:])
        try:
            msg = ws.recv(timeout=5)
        except TimeoutError:
            continue
        seen += msg if isinstance(msg, bytes) else msg.encode()
print("the guest is ready, read through /ws/serial")
PY

deleted=$(api DELETE "/api/vms/$id?force=true")
[ "$(jq -r .success <<<"$deleted")" = true ] || { echo "delete: $deleted" >&2; exit 1; }
log "docker compose down"
compose down --remove-orphans
left=$(docker ps -aq --filter "name=fastvm-e2e" --filter "name=fastvm-$id")
[ -z "$left" ] || { echo "containers left behind: $left" >&2; exit 1; }
echo "compose: up --build, a guest booted in the docker runtime and read through the relay, down with nothing left"
