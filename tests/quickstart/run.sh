#!/usr/bin/env bash
# The README's first Quick start command, as an operator runs it: scripts/run.sh sets up what is
# missing, builds the release binaries and serves the dashboard (embedded) with admin/admin.
set -euo pipefail
cd "$(dirname "$0")/../.."
data=$(mktemp -d)
address=127.0.0.1:18820
FASTVM_LISTEN=$address FASTVM_DATA_DIR=$data bash scripts/run.sh >"$data/run.log" 2>&1 &
pid=$!
cleanup() {
  local status=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ "$status" -eq 0 ] || tail -n 30 "$data/run.log" >&2
  rm -rf "$data"
  exit "$status"
}
trap cleanup EXIT
# A clean checkout builds the release binaries first: that takes minutes.
for _ in $(seq 1 1200); do
  curl -sf "http://$address/api/health" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "scripts/run.sh ended before serving" >&2; exit 1; }
  sleep 0.5
done
page=$(curl -sf "http://$address/")
grep -q '<title>Fast VM</title>' <<<"$page" || { echo "the dashboard is not served: ${page:0:200}" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$address/api/auth/login" \
  -H 'Content-Type: application/json' -d '{"username": "admin", "password": "admin"}')
[ "$code" = 200 ] || { echo "admin/admin answered $code" >&2; exit 1; }
echo "scripts/run.sh: built, served the dashboard and signed admin/admin in"
