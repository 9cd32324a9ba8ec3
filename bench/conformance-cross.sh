#!/usr/bin/env bash
# bench/conformance-cross.sh - a short conformance run of a cross-built
# engine (arm64, armhf) under qemu-user, against the outputs an x86 run of
# bench/conformance.sh stored (its --keep workdir: models, llama.cpp's
# tokens and logits, our x86 tokens and logits).
#
# Usage:
#   bench/conformance.sh --build build/dev --keep --workdir W      # x86, once
#   bench/conformance-cross.sh --build build/engine-arm64 --workdir W
#       [--arch arm64|armhf] [--rows "llama-q8_0-f16 ..."] [-n 16] [-t 2]
#
# The driver (bench/engine/rtbench.c) is compiled with the target's cross
# gcc against BUILD's libruntime.a + libcommon.a and run through
# qemu-aarch64 / qemu-arm (QEMU_LD_PREFIX=/usr/<triplet>). Per row: the
# prompt ids must equal llama.cpp's, the first N greedy tokens must equal
# llama.cpp's, and the last-prompt-position logits are compared with
# llama.cpp's (d_ref) and with our x86 build's (d_x86: 0 means bitwise the
# same float results on both ISAs). PASS: ids and tokens equal and d_ref <=
# 1e-3 (F32/F16 weights are bitwise the x86 order on NEON; the quantized NEON
# dots sum per block in their own order, the scalar path in its own).
# Exit 0 all PASS, 1 a FAIL, 77 missing tools or workdir.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=
WORK=
ARCH=arm64
ROWS="llama-f32-f16 llama-f16-f16 llama-q8_0-f16 llama-q4_0-f16--no-repack llama-q4_K-f16--no-repack llama-q6_K-f16 qwen3-q8_0-f32"
N=16
T=2

die() { echo "conformance-cross: error: $*" >&2; exit 1; }
skip() { echo "conformance-cross: skipped: $*" >&2; exit 77; }

while [ $# -gt 0 ]; do
    case "$1" in
        --build) BUILD=${2:?}; shift 2 ;;
        --workdir) WORK=${2:?}; shift 2 ;;
        --arch) ARCH=${2:?}; shift 2 ;;
        --rows) ROWS=${2:?}; shift 2 ;;
        -n) N=${2:?}; shift 2 ;;
        -t) T=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case "$N" in ''|*[!0-9]*) die "-n must be a positive integer" ;; esac
[ -n "$BUILD" ] && [ -n "$WORK" ] || die "--build and --workdir are required"
case "$ARCH" in
    arm64) TRIPLET=aarch64-linux-gnu; QEMU=qemu-aarch64 ;;
    armhf) TRIPLET=arm-linux-gnueabihf; QEMU=qemu-arm ;;
    *) die "--arch arm64 or armhf" ;;
esac
CC_X=${CC_CROSS:-$TRIPLET-gcc}
command -v "$CC_X" >/dev/null || skip "no $CC_X"
command -v "$QEMU" >/dev/null || QEMU=$QEMU-static
command -v "$QEMU" >/dev/null || skip "no qemu-user for $ARCH"
[ -f "$BUILD/runtime/libruntime.a" ] || skip "no $BUILD/runtime/libruntime.a"
[ -d "$WORK" ] || skip "no workdir $WORK (bench/conformance.sh --keep --workdir W)"

BIN=$WORK/rtbench-$ARCH
"$CC_X" -std=c11 -O2 -Wall -Wextra -Werror -I"$ROOT/runtime/include" -I"$ROOT/common/include" \
    "$HERE/engine/rtbench.c" "$BUILD/runtime/libruntime.a" "$BUILD/common/libcommon.a" \
    -lpthread -lm -o "$BIN" || die "cannot cross-compile bench/engine/rtbench.c"
export QEMU_LD_PREFIX=/usr/$TRIPLET

line() { sed -n "s/^$1 [0-9]* *//p" "$2" | head -n1; }
maxdiff() {
    [ -s "$1" ] && [ -s "$2" ] || { echo missing; return; }
    paste <(od -An -v -tf4 -w4 "$1") <(od -An -v -tf4 -w4 "$2") | awk '
        { d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d } END { printf "%.3g\n", m }'
}

PROMPT="Once upon a time, in a small village"
NPASS=0
NFAIL=0
printf '%-28s %7s %9s %9s %8s %s\n' row tok d_ref d_x86 secs result
for row in $ROWS; do
    # ARCH-TYPE-KV[--no-repack], as bench/conformance.sh names them
    base=${row%--no-repack}
    flags=()
    [ "$base" != "$row" ] && flags+=(--no-repack)
    kv=${base##*-}
    [ "$kv" = f16 ] && flags+=(--kv-f16)
    m=$WORK/${base%-*}.gguf
    if [ ! -f "$m" ] || [ ! -f "$WORK/$row.ref.txt" ]; then
        printf '%-28s %s\n' "$row" "SKIP (not in $WORK)"
        continue
    fi
    t0=$(date +%s)
    if ! "$QEMU" "$BIN" ref "${flags[@]}" -m "$m" -p "$PROMPT" -n "$N" -t "$T" \
            -o "$WORK/$row.$ARCH.txt" --logits-prompt "$WORK/$row.$ARCH.prompt.f32" \
            >"$WORK/$row.$ARCH.log" 2>&1; then
        printf '%-28s %s\n' "$row" "FAIL (run failed: $(head -n1 "$WORK/$row.$ARCH.log"))"
        NFAIL=$((NFAIL + 1))
        continue
    fi
    secs=$(( $(date +%s) - t0 ))
    rp=$(line prompt "$WORK/$row.ref.txt"); rg=$(line gen "$WORK/$row.ref.txt")
    op=$(line prompt "$WORK/$row.$ARCH.txt"); og=$(line gen "$WORK/$row.$ARCH.txt")
    prefix=$(awk -v a="$rg" -v b="$og" 'BEGIN { n = split(a, x, " "); m = split(b, y, " "); k = 0
        while (k < n && k < m && x[k + 1] == y[k + 1]) k++; print k }')
    [ "$rp" = "$op" ] || prefix=0
    dr=$(maxdiff "$WORK/$row.ref.prompt.f32" "$WORK/$row.$ARCH.prompt.f32")
    dx=$(maxdiff "$WORK/$row.ours.prompt.f32" "$WORK/$row.$ARCH.prompt.f32")
    res=PASS
    if [ "$prefix" -lt "$N" ] || ! awk -v a="$dr" 'BEGIN { exit !(a + 0 == a && a <= 1e-3) }'; then
        res=FAIL
    fi
    if [ $res = PASS ]; then NPASS=$((NPASS + 1)); else NFAIL=$((NFAIL + 1)); fi
    printf '%-28s %3d/%-3d %9s %9s %8s %s\n' "$row" "$prefix" "$N" "$dr" "$dx" "$secs" "$res"
done
echo "conformance-cross: $ARCH under $QEMU, n=$N, t=$T, workdir $WORK: $NPASS passed, $NFAIL failed"
[ "$NFAIL" -eq 0 ]
