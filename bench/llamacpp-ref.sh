#!/usr/bin/env bash
# bench/llamacpp-ref.sh - build the llama.cpp reference tools once, into a cache
# OUTSIDE the repo, for benchmarks and conformance checks of our engine.
#
# The project's own CMake build never needs llama.cpp; only bench/ uses this.
#
# Usage:  bench/llamacpp-ref.sh [--no-server]    # prints the bin/ directory
# Env:    FLOTILLA_CACHE   cache root (default $HOME/.cache/flotilla)
#         FLOTILLA_JOBS    parallel build jobs (default 2: the machine has 2 cores)
#         FLOTILLA_LLAMA_NATIVE  ON (default: -march=native, AVX2 here) or OFF
#
# Source:  $CACHE/llama.cpp-src    (tests/fetch-llama-assets.sh, npm node-llama-cpp)
# Build:   $CACHE/llama.cpp-build  (Release, CPU only, shared libllama, no
#          OpenSSL/curl, no web UI download)
# Binaries in $CACHE/llama.cpp-build/bin:
#   llama-completion llama-cli llama-simple llama-bench llama-tokenize
#   llama-eval-callback llama-debug test-tokenizer-0 llama-server (unless --no-server)
#   llref  (bench/conformance/llref.c: greedy token ids + final logits)
# Idempotent: when the stamp matches (same source commit, same llref.c) it only
# prints the bin path. Exit 1 with one "llamacpp-ref: error: ..." line on failure.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE=${FLOTILLA_CACHE:-${HOME:-/root}/.cache/flotilla}
JOBS=${FLOTILLA_JOBS:-2}
NATIVE=${FLOTILLA_LLAMA_NATIVE:-ON}
WITH_SERVER=1
[ "${1:-}" = "--no-server" ] && WITH_SERVER=0

die() {
    echo "llamacpp-ref: error: $*" >&2
    exit 1
}
log() { echo "llamacpp-ref: $*" >&2; }

SRC=$("$ROOT/tests/fetch-llama-assets.sh") || die "cannot fetch llama.cpp source (see above)"
BUILD=$CACHE/llama.cpp-build
BIN=$BUILD/bin
STAMP=$BUILD/.flotilla-built
LLREF_C=$HERE/conformance/llref.c

core_targets="llama llama-common llama-completion llama-cli llama-simple llama-bench llama-tokenize llama-eval-callback llama-debug test-tokenizer-0"
commit=$(sed -n 's/^commit=//p' "$SRC/.flotilla-fetched")
llref_sum=$(sha256sum "$LLREF_C" 2>/dev/null | cut -d' ' -f1)
want_stamp="commit=$commit native=$NATIVE server=$WITH_SERVER llref=$llref_sum targets=$core_targets"

have_stamp=$(cat "$STAMP" 2>/dev/null)
# a build with the server also satisfies a --no-server request
if [ -x "$BIN/llref" ] && { [ "$have_stamp" = "$want_stamp" ] ||
        [ "$have_stamp" = "${want_stamp/server=0/server=1}" ]; }; then
    echo "$BIN"
    exit 0
fi

command -v cmake >/dev/null 2>&1 || die "cmake not found"
command -v c++ >/dev/null 2>&1 || die "C++ compiler not found (apt-get install g++)"
command -v cc >/dev/null 2>&1 || die "C compiler not found (apt-get install gcc)"
mkdir -p "$BUILD" || die "cannot create $BUILD"

t0=$(date +%s)
if [ ! -f "$BUILD/CMakeCache.txt" ] || ! grep -q "GGML_NATIVE:BOOL=$NATIVE" "$BUILD/CMakeCache.txt"; then
    log "configuring $BUILD"
    cmake -S "$SRC" -B "$BUILD" \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON \
        -DGGML_NATIVE="$NATIVE" \
        -DGGML_CCACHE=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_TESTS=ON \
        -DLLAMA_BUILD_EXAMPLES=ON \
        -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_SERVER=ON \
        </dev/null >"$BUILD/configure.log" 2>&1 \
        || die "cmake configure failed: see $BUILD/configure.log"
fi

log "building: $core_targets (-j$JOBS, log $BUILD/build.log)"
# shellcheck disable=SC2086
cmake --build "$BUILD" -j"$JOBS" --target $core_targets </dev/null >"$BUILD/build.log" 2>&1 \
    || die "build failed: see $BUILD/build.log"

if [ "$WITH_SERVER" = 1 ]; then
    log "building: llama-server"
    cmake --build "$BUILD" -j"$JOBS" --target llama-server </dev/null >>"$BUILD/build.log" 2>&1 \
        || die "llama-server build failed: see $BUILD/build.log (rerun with --no-server)"
fi

# llref: our tiny C driver over the public llama.h API (greedy ids + logits).
[ -f "$LLREF_C" ] || die "missing $LLREF_C"
cc -std=c11 -O2 -Wall -Wextra -Werror \
    -I"$SRC/include" -I"$SRC/ggml/include" \
    -o "$BIN/llref.tmp" "$LLREF_C" \
    -L"$BIN" -lllama -lggml -lggml-base -lm -Wl,-rpath,"$BIN" \
    </dev/null >"$BUILD/llref.log" 2>&1 || die "llref build failed: see $BUILD/llref.log"
mv -f "$BIN/llref.tmp" "$BIN/llref" || die "cannot install llref"

echo "$want_stamp" >"$STAMP" || die "cannot write $STAMP"
log "done in $(( $(date +%s) - t0 ))s"
echo "$BIN"
