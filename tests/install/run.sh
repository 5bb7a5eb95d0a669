#!/usr/bin/env bash
# install.sh as an operator runs it, on this machine: the plan (--dry-run) changes nothing; a real
# run installs Fast VM with the admin password given, the dashboard answers and admin/admin does not
# sign in; a second run changes nothing; --uninstall removes it and keeps the data, --purge the rest.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "the install test needs root (it installs into /usr/local, /etc, /var/lib)" >&2; exit 1; }
for path in /usr/local/bin/fastvm /etc/fastvm /var/lib/fastvm; do
  [ ! -e "$path" ] || { echo "$path exists: the install test needs a host without Fast VM installed" >&2; exit 1; }
done
bins=${FASTVM_BINARIES:-$PWD/target/debug}
address=127.0.0.1:18790
opts=(--yes --no-docker --no-bridge --binaries "$bins" --listen "$address")
log=$(mktemp)
server=""
cleanup() {
  local status=$?
  [ -z "$server" ] || kill "$server" 2>/dev/null || true
  [ -z "$server" ] || wait "$server" 2>/dev/null || true
  bash install.sh --uninstall --purge >/dev/null 2>&1 || true
  rm -f "$log"
  exit "$status"
}
trap cleanup EXIT
check() { if "$@"; then echo "ok: ${*: -1}"; else echo "FAILED: $*" >&2; exit 1; fi; }
contains() { grep -q -- "$2" "$1"; }
absent() { [ ! -e "$1" ]; }
present() { [ -e "$1" ]; }

bash install.sh "${opts[@]}" --dry-run >"$log"
check contains "$log" "would run: install -m 0755"
check absent /etc/fastvm
check absent /usr/local/bin/fastvm

bash install.sh "${opts[@]}" --admin-password installer-pass-1 >"$log"
check contains "$log" "created the first admin"
check present /usr/local/bin/fastvm
check present /etc/systemd/system/fastvm.service
[ "$(stat -c %a /etc/fastvm/env)" = 640 ] || { echo "FAILED: /etc/fastvm/env is not 0640" >&2; exit 1; }
[ "$(stat -c %U:%a /var/lib/fastvm)" = fastvm:700 ] || { echo "FAILED: /var/lib/fastvm is not fastvm's, 0700" >&2; exit 1; }
if command -v systemd-analyze >/dev/null 2>&1; then
  check systemd-analyze verify /etc/systemd/system/fastvm.service
fi

# Run again: nothing changes; without systemd it then starts Fast VM in the foreground, as it says.
if [ -d /run/systemd/system ]; then
  bash install.sh "${opts[@]}" >"$log"
else
  check contains "$log" "systemd is not running here"
  bash install.sh "${opts[@]}" --foreground >"$log" 2>&1 &
  server=$!
fi
for _ in $(seq 1 150); do
  curl -sf "http://$address/api/health" >/dev/null 2>&1 && break
  sleep 0.2
done
check contains "$log" "nothing changed"
health=$(curl -sf "http://$address/api/health")
check test "$(jq -r .checks.default_password.ok <<<"$health")" = true
login() { curl -s -o /dev/null -w '%{http_code}' -X POST "http://$address/api/auth/login" \
  -H 'Content-Type: application/json' -d "{\"username\": \"admin\", \"password\": \"$1\"}"; }
check test "$(login installer-pass-1)" = 200
check test "$(login admin)" = 401
check test "$(curl -s -o /dev/null -w '%{http_code}' "http://$address/")" = 200
[ -z "$server" ] || { kill "$server"; wait "$server" 2>/dev/null || true; server=""; }

bash install.sh --uninstall >"$log"
check absent /usr/local/bin/fastvm
check absent /etc/fastvm
check present /var/lib/fastvm/fastvm.db
check contains "$log" "kept /var/lib/fastvm"
bash install.sh --uninstall --purge >"$log"
check absent /var/lib/fastvm
if id fastvm >/dev/null 2>&1; then echo "FAILED: the fastvm user is left" >&2; exit 1; fi
echo "install.sh: plan, install, second run, uninstall and purge as documented"
