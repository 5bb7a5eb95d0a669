#!/usr/bin/env bash
# Sets up everything the test suite needs (QEMU, OVMF, swtpm, a running Docker engine, Chromium, the
# dashboard's build) and runs it: formatting, clippy, every cargo test, then the browser tests. Ends
# with a one-line summary.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_vm_tools
ensure_dockerd
ensure_rust
ensure_chromium
ensure_dashboard
# The client tests' tools (curl, jq, shellcheck).
ensure_packages curl jq shellcheck wrk
# The tiny guest every end-to-end test boots; rebuilt only when its inputs change.
export FASTVM_TEST_GUEST_ISO="${FASTVM_TEST_GUEST_ISO:-/var/cache/fastvm/guest/fastvm-test-guest.iso}"
log "test guest ISO ($FASTVM_TEST_GUEST_ISO)"
as_root bash tests/guest/build-test-guest.sh "$(dirname "$FASTVM_TEST_GUEST_ISO")" >/dev/null

log "cargo fmt --check"
cargo fmt --all -- --check
log "shellcheck"
shellcheck -x install.sh scripts/*.sh tests/clients/*.sh tests/install/*.sh tests/compose/*.sh tests/quickstart/*.sh tests/api/*.sh fuzz/*.sh
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

# The docker runtime's tests start VMs from this image, holding the vmrunner built from this checkout.
bash scripts/build-images.sh --profile debug

# Every controller a test starts keeps its log here (at every level of our code); searched for
# credentials at the end.
export FASTVM_TEST_LOGS="$PWD/target/test-logs"
rm -rf "$FASTVM_TEST_LOGS"

log "cargo test"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$out" || status=$?

passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$out" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$out" | awk '{s+=$1} END {print s+0}')
ignored=$(grep -Eo '[0-9]+ ignored;' "$out" | awk '{s+=$1} END {print s+0}')

# Generators (and the original's clients) read the committed document, which a cargo test keeps
# equal to what the code serves: it must be valid OpenAPI 3.1.
log "openapi/openapi.json against the OpenAPI 3.1 schema (openapi-spec-validator)"
if validator=$(ensure_py_tool openapi-spec-validator openapi-spec-validator) && "$validator" openapi/openapi.json; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
fi

# The dashboard in Chromium, against the debug binaries cargo test built; screenshots of every view.
log "browser tests (node --test frontend/tests)"
export FASTVM_SCREENSHOTS="${FASTVM_SCREENSHOTS:-$PWD/target/screenshots}"
ui=$(mktemp)
trap 'rm -f "$out" "$ui"' EXIT
ui_status=0
cargo build -q --bin fastvm --bin vmrunner
(cd frontend && node --test --test-reporter=tap tests/) 2>&1 | tee "$ui" || ui_status=$?

# Clients of the API as operators write them: the brief's curl examples verbatim, and a client
# generated from the OpenAPI document.
for client in tests/clients/brief.sh tests/clients/python.sh; do
  log "$client"
  if bash "$client"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
# Hardening: schemathesis over every operation of the document (no 5xx, every answer as documented),
# the list under 200 connections with 1000 VMs (no error), and the cargo-fuzz targets.
log "tests/api/fuzz.sh"
if bash tests/api/fuzz.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
log "tests/bench/api_load.py --check"
if FASTVM_BIN=$PWD/target/debug/fastvm python3 tests/bench/api_load.py --check --seconds 5; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
fi
log "fuzz/run.sh"
if bash fuzz/run.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
# install.sh for real: into /usr/local, /etc and /var/lib of this machine, then removed again.
log "tests/install/run.sh"
if as_root env FASTVM_BINARIES="$PWD/target/debug" bash tests/install/run.sh; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
fi
# docker compose, offline, end to end (a guest booted in the docker runtime, nothing left after down).
log "tests/compose/run.sh"
if bash tests/compose/run.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
# The README's first Quick start command (a release build, then the dashboard on its own port).
log "tests/quickstart/run.sh"
if bash tests/quickstart/run.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
# No log line of the whole run holds a token, a ticket, a SPICE password, a password, a hash or
# the JWT secret (the scanner first proves it finds each of them).
log "tests/logs/scan_secrets.py"
if python3 tests/logs/scan_secrets.py --self-test && python3 tests/logs/scan_secrets.py "$FASTVM_TEST_LOGS"; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
fi
ui_passed=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$ui" | tail -n1)
ui_failed=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$ui" | tail -n1)
echo "browser screenshots: $FASTVM_SCREENSHOTS"

passed=$((passed + ${ui_passed:-0}))
failed=$((failed + ${ui_failed:-0}))
echo
echo "Summary: ${passed} passed, ${failed} failed, ${ignored} skipped"
if [ "$status" -ne 0 ] || [ "$ui_status" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$passed" -eq 0 ] || [ -z "$ui_passed" ]; then
  exit 1
fi
