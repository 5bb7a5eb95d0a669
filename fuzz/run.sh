#!/usr/bin/env bash
# The cargo-fuzz targets, each for a short while (FASTVM_FUZZ_SECONDS, default 30) from the corpus
# kept in fuzz/corpus/, on the stable toolchain (no sanitizer: `-s none`). A crash fails the run and
# leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
cd fuzz
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz from crates.io"
  cargo install -q --locked cargo-fuzz
fi
seconds=${FASTVM_FUZZ_SECONDS:-30}
for target in vm_spec ws_frames; do
  log "cargo fuzz run $target (${seconds}s)"
  # A scratch copy of the corpus: what a run finds is kept only when someone commits it.
  work=$(mktemp -d)
  cp -r "corpus/$target/." "$work/"
  status=0
  cargo fuzz run -s none "$target" "$work" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    >"$work.log" 2>&1 || status=$?
  grep -E '^#[0-9]+ +DONE|^Done [0-9]+ runs' "$work.log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$work.log" >&2
  fi
  rm -rf "$work" "$work.log"
  [ "$status" -eq 0 ] || exit 1
done
