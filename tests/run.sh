#!/usr/bin/env bash
# The whole test suite, from a fresh Debian bookworm machine:
#   bash tests/run.sh
# Installs what is missing, fetches llama.cpp's tokenizer vectors into a cache
# (optional: tests that need them skip visibly without), builds the 'dev'
# preset (warnings as errors) and runs every test, then does the same under
# AddressSanitizer + UndefinedBehaviorSanitizer. ctest's summary closes the
# output. FL_SKIP_ASAN=1 skips the sanitizer pass (local iteration only).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
# Tests: most integration tests wait on brokers, timers and children more than
# they compute, so twice the cores keeps the two passes inside the CI budget;
# they are written to hold under load (each waits with a bound, not a sleep).
TEST_JOBS=${TEST_JOBS:-$((JOBS * 2))}

bash packaging/deps.sh
if [ -x tests/fetch-llama-assets.sh ] || [ -f tests/fetch-llama-assets.sh ]; then
  bash tests/fetch-llama-assets.sh || echo "tests: llama.cpp assets unavailable; tokenizer vector tests will be skipped"
fi

run_preset() {
  local preset=$1
  echo "=== preset $preset: configure + build"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$JOBS"
  echo "=== preset $preset: test"
  ctest --preset "$preset" -j "$TEST_JOBS" --timeout 600 --no-label-summary
}

if [ "${FL_SKIP_ASAN:-0}" != 1 ]; then
  # Sanitizer pass first, so the closing summary is the full dev run's.
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_preset asan
fi
run_preset dev
