# shellcheck shell=bash
# Starts a throwaway controller for a client test (sourced): `start_controller <address>` sets
# CONTROLLER_DATA and stops the controller and removes its data when the script exits.
start_controller() {
  local address=$1 bin=${FASTVM_BIN:-target/debug/fastvm}
  if command curl -s -o /dev/null "http://$address/"; then
    echo "something already listens on $address: stop it first (the test needs its own controller there)" >&2
    return 1
  fi
  CONTROLLER_DATA=$(mktemp -d)
  # A test run searches every server's log, at every level of our code, for credentials.
  local level=${RUST_LOG:-info}
  [ -z "${FASTVM_TEST_LOGS:-}" ] || level=${RUST_LOG:-info,controller=trace,fastvm=trace,tower_http=debug}
  RUST_LOG=$level FASTVM_DATA_DIR=$CONTROLLER_DATA FASTVM_LISTEN=$address FASTVM_ACCEL=tcg FASTVM_BCRYPT_COST=4 \
    FASTVM_LOGIN_RATE_LIMIT=off "$bin" serve >"$CONTROLLER_DATA/controller.log" 2>&1 &
  CONTROLLER_PID=$!
  trap stop_controller EXIT
  for _ in $(seq 1 100); do
    if command curl -sf "http://$address/api/health" >/dev/null 2>&1 && kill -0 "$CONTROLLER_PID"; then
      return 0
    fi
    sleep 0.1
  done
  echo "the controller did not come up:" >&2
  cat "$CONTROLLER_DATA/controller.log" >&2
  return 1
}

stop_controller() {
  local status=$?
  kill "$CONTROLLER_PID" 2>/dev/null && wait "$CONTROLLER_PID" 2>/dev/null
  [ "$status" -eq 0 ] || tail -n 30 "$CONTROLLER_DATA/controller.log" >&2
  if [ -n "${FASTVM_TEST_LOGS:-}" ] && mkdir -p "$FASTVM_TEST_LOGS"; then
    cp "$CONTROLLER_DATA/controller.log" "$FASTVM_TEST_LOGS/client-$CONTROLLER_PID.log"
    [ ! -f "$CONTROLLER_DATA/jwt_secret" ] || cp "$CONTROLLER_DATA/jwt_secret" "$FASTVM_TEST_LOGS/client-$CONTROLLER_PID.secrets"
  fi
  rm -rf "$CONTROLLER_DATA"
  [ -z "${EXTRA_CLEANUP:-}" ] || eval "$EXTRA_CLEANUP"
  exit "$status"
}
