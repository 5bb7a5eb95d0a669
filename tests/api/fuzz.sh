#!/usr/bin/env bash
# schemathesis (PyPI) against the committed OpenAPI document of a throwaway controller, as admin:
# every operation, valid and invalid input, checks that no answer is a 5xx and that every answer
# matches what the document says. The controller runs in a network namespace of its own (loopback
# only), so whatever NIC or port forward the fuzzer invents touches nothing of the host.
#   FASTVM_FUZZ_EXAMPLES  examples per operation and phase (default 200)
#   FASTVM_FUZZ_SEED      a seed to repeat a run (default: a new one, printed)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

if [ -z "${FASTVM_FUZZ_NETNS:-}" ]; then
  st=$(ensure_py_tool schemathesis st)
  ensure_packages iproute2 util-linux curl jq
  if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
  FASTVM_FUZZ_NETNS=1 FASTVM_FUZZ_ST="$st" exec unshare --net bash "$0" "$@"
fi
ip link set lo up
. tests/clients/common.sh

address=127.0.0.1:18767
# VMs outlive their controller by design: the ones the fuzzer started go when the test does
# (vmrunner takes its QEMU along).
# shellcheck disable=SC2016 # expanded when the test ends, once CONTROLLER_DATA is set
EXTRA_CLEANUP='pkill -KILL -f "vmrunner run $CONTROLLER_DATA/" || true'
start_controller "$address"
base="http://$address"
seed=${FASTVM_FUZZ_SEED:-$RANDOM$RANDOM}
examples=${FASTVM_FUZZ_EXAMPLES:-200}
log "schemathesis: $examples examples per operation, seed $seed (FASTVM_FUZZ_SEED=$seed repeats it)"

# Every token handed out is kept, to look for it in the log afterwards.
token() {
  curl -sf -X POST "$base/api/auth/login" -H 'Content-Type: application/json' \
    -d '{"username":"admin","password":"admin"}' | jq -r .access_token | tee -a "$CONTROLLER_DATA/tokens"
}
call() { # <method> <path> [json]: the answer's body; fails on an error status
  curl -sf -X "$1" "$base$2" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' ${3:+-d "$3"}
}

# Real objects for every path parameter, so that the fuzzer gets past "404 not found" into the
# handlers: a VM with a disk, a snapshot and a backup of it, a volume, a job, a second user.
admin=$(token)
vm=$(call POST /api/vms '{"name":"fuzzed","memory":128,"cpus":1,"disk_size":1}' | jq -r .vm.id)
mkdir -p "$CONTROLLER_DATA/vms/$vm"
qemu-img create -q -f qcow2 "$CONTROLLER_DATA/vms/$vm/disk0.qcow2" 1G
snap=$(call POST "/api/vms/$vm/snapshots" '{"name":"s1"}' | jq -r .snapshot.id)
backup=$(call POST "/api/vms/$vm/backup" | jq -r .id)
job=$(call GET /api/jobs | jq -r '.[0].id')
vol=$(call POST /api/volumes '{"name":"fuzzed","size_gb":1}' | jq -r .volume.id)
call POST /api/auth/users '{"username":"fuzzed","password":"fuzzed-password","is_admin":false}' >/dev/null
config=$CONTROLLER_DATA/schemathesis.toml
cat >"$config" <<TOML
[parameters]
vm_id = "$vm"
snap_id = "$snap"
backup_id = "$backup"
job_id = "$job"
vol_id = "$vol"
username = "fuzzed"
# A graceful stop waits this long for a guest (this one has no OS to hear the power button).
timeout = 5
TOML

# What deletes those objects or can end the session (sign out, a new admin password) runs last,
# each in a run of its own with a fresh token, so that it does not turn the rest into 404s and 401s.
last='^/api/auth/(logout|change-password|users/\{username\}/password)$'
status=0
run() {
  "$FASTVM_FUZZ_ST" --config-file "$config" run openapi/openapi.json --url "$base" \
    -H "Authorization: Bearer $(token)" --checks not_a_server_error,response_schema_conformance \
    --max-examples "$examples" --seed "$seed" --phases examples,coverage,fuzzing --workers 2 \
    --request-timeout 60 --no-color --suppress-health-check all "$@" || status=1
}
run --exclude-path-regex "$last" --exclude-method DELETE
for path in '/api/auth/users/{username}/password' /api/auth/change-password /api/auth/logout; do
  run --include-path "$path"
done
run --include-method DELETE
if grep -qE 'ERROR|panicked' "$CONTROLLER_DATA/controller.log"; then
  echo "the controller logged errors under the fuzzer:" >&2
  grep -E 'ERROR|panicked' "$CONTROLLER_DATA/controller.log" | head -n 20 >&2
  status=1
fi
# Nothing secret in the log: no token, nor the password the fuzzer's user was given.
echo fuzzed-password >>"$CONTROLLER_DATA/tokens"
if grep -qF -f "$CONTROLLER_DATA/tokens" "$CONTROLLER_DATA/controller.log"; then
  echo "the controller's log holds a token or a password" >&2
  status=1
fi
exit "$status"
