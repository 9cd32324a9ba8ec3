#!/usr/bin/env bash
# bench/conformance-cross.sh - conformance of a cross-built engine (arm64:
# NEON kernels; armhf: the scalar path) run under qemu-user, against
# llama.cpp's outputs computed natively on x86_64 (llref, AVX2 build).
#
# Usage:
#   bench/conformance-cross.sh --build CROSS_BUILD [--arch arm64|armhf]
#       [--workdir W] [--x86-build DIR] [--sysroot ROOT]
#       [--archs "llama qwen2 qwen3"] [--types "f32 q8_0 q4_K"] [--kv "f16"]
#       [--threads "1 2"] [-n 64] [--rows "llama-q8_0-f16 qwen3-q4_K-f32 ..."]
#
# CROSS_BUILD: a cross build of the tree (libruntime.a + libcommon.a), e.g.
#   cmake -G Ninja -B build/engine-arm64 --toolchain cmake/toolchain-aarch64-linux-gnu.cmake
#   cmake --build build/engine-arm64 --target runtime common
# The driver (bench/engine/rtbench.c, rt_engine_run_cli) is compiled with
# the target's cross gcc (CC_CROSS overrides) and linked statically: no
# dynamic loader is involved under qemu. (Running a dynamic arm64 program
# with QEMU_LD_PREFIX=/usr/aarch64-linux-gnu mixes the cross package's
# ld.so, libc6-arm64-cross 2.36-8cross1, with the multiarch libc.so.6 that
# ld.so then finds in /lib/aarch64-linux-gnu, libc6:arm64 2.36-9+deb12u14:
# pthread_create never returns. That was the "2-thread stall under qemu";
# 1 thread creates no thread and ran.) --sysroot ROOT links against
# ROOT's libraries instead (a debootstrap root, cmake/toolchain-sysroot.cmake).
#
# Rows are ARCH-TYPE-KV[--no-repack], as bench/conformance.sh names them;
# each is run once per thread count. W holds the models and the x86 outputs
# (llama.cpp's tokens and logits, and ours); rows missing there are made by
# bench/conformance.sh --build X86_BUILD --keep --workdir W (default
# X86_BUILD: build/dev; llama.cpp from bench/llamacpp-ref.sh). Default W:
# /tmp/flotilla-conformance-cross (kept: the x86 part is reused).
#
# Per row and thread count: the prompt ids and the first N greedy tokens
# must equal llama.cpp's; d_ref = max |logit diff| at the last prompt
# position (one batch) vs llama.cpp, d_x86 the same vs our x86 build (0:
# bitwise the x86 result). PASS: ids and N tokens equal and d_ref <= tol
# (F32 weights 1e-4, others 1e-3, as bench/conformance.sh). Exit 0 all
# PASS, 1 a FAIL, 77 missing tools, cross build or llama.cpp reference.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=
X86=$ROOT/build/dev
WORK=/tmp/flotilla-conformance-cross
ARCH=arm64
ARCHS="llama qwen2 qwen3"
TYPES="f32 q8_0 q4_K"
KVS="f16"
ROWS=
THREADS="1 2"
N=64
SYSROOT=
PROMPT="Once upon a time, in a small village"

die() { echo "conformance-cross: error: $*" >&2; exit 1; }
skip() { echo "conformance-cross: skipped: $*" >&2; exit 77; }

while [ $# -gt 0 ]; do
    case "$1" in
        --build) BUILD=${2:?}; shift 2 ;;
        --x86-build) X86=${2:?}; shift 2 ;;
        --workdir) WORK=${2:?}; shift 2 ;;
        --arch) ARCH=${2:?}; shift 2 ;;
        --archs) ARCHS=${2:?}; shift 2 ;;
        --types) TYPES=${2:?}; shift 2 ;;
        --kv) KVS=${2:?}; shift 2 ;;
        --rows) ROWS=${2:?}; shift 2 ;;
        --threads|-t) THREADS=${2:?}; shift 2 ;;
        --sysroot) SYSROOT=${2:?}; shift 2 ;;
        -n) N=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case "$N" in ''|*[!0-9]*) die "-n must be a positive integer" ;; esac
[ "$N" -ge 1 ] || die "-n must be a positive integer"
for t in $THREADS; do case "$t" in ''|*[!0-9]*|0) die "--threads takes positive integers" ;; esac; done
for kv in $KVS; do case "$kv" in f32|f16) ;; *) die "--kv takes f32 and/or f16" ;; esac; done
[ -n "$BUILD" ] || die "--build CROSS_BUILD is required"
case "$ARCH" in
    arm64) TRIPLET=aarch64-linux-gnu; QEMU=qemu-aarch64 ;;
    armhf) TRIPLET=arm-linux-gnueabihf; QEMU=qemu-arm ;;
    *) die "--arch arm64 or armhf" ;;
esac
if [ -z "$ROWS" ]; then
    for a in $ARCHS; do for ty in $TYPES; do for kv in $KVS; do ROWS="$ROWS $a-$ty-$kv"; done; done; done
fi
CC_X=${CC_CROSS:-$TRIPLET-gcc}
command -v "$CC_X" >/dev/null || skip "no $CC_X (crossbuild-essential-$ARCH)"
command -v "$QEMU" >/dev/null || QEMU=$QEMU-static
command -v "$QEMU" >/dev/null || skip "no qemu-user for $ARCH"
[ -f "$BUILD/runtime/libruntime.a" ] && [ -f "$BUILD/common/libcommon.a" ] ||
    skip "no $BUILD/runtime/libruntime.a / common/libcommon.a (cmake --build $BUILD --target runtime common)"
mkdir -p "$WORK" || die "cannot create $WORK"

# x86 references for the rows W lacks (models, llama.cpp's and our outputs)
row_ok() { # ROW: model and x86 outputs present, with >= N generated tokens
    local base=${1%--no-repack} g
    [ -f "$WORK/${base%-*}.gguf" ] && [ -s "$WORK/$1.ref.prompt.f32" ] &&
        [ -s "$WORK/$1.ours.prompt.f32" ] || return 1
    g=$(sed -n 's/^gen \([0-9]*\).*/\1/p' "$WORK/$1.ref.txt" 2>/dev/null | head -n1)
    [ -n "$g" ] && [ "$g" -ge "$N" ]
}
declare -A NEED=() NEED_NR=()
for row in $ROWS; do
    row_ok "$row" && continue
    base=${row%--no-repack}
    mt=${base%-*}              # ARCH-TYPE
    NEED[$mt]="${NEED[$mt]:-} ${base##*-}"
    [ "$base" != "$row" ] && NEED_NR[$mt]=1
done
for mt in "${!NEED[@]}"; do
    a=${mt%%-*}; ty=${mt#*-}
    kvs=$(echo "${NEED[$mt]}" | tr ' ' '\n' | sort -u | tr '\n' ' ')
    echo "conformance-cross: x86 reference for $mt (K/V $kvs): bench/conformance.sh --build $X86"
    nr=(--no-repack-rows)
    [ -n "${NEED_NR[$mt]:-}" ] && nr=()
    "$HERE/conformance.sh" --build "$X86" --keep --workdir "$WORK" --archs "$a" --types "$ty" \
        --kv "$kvs" -n "$N" --prompt "$PROMPT" "${nr[@]}" 2>&1 | sed 's/^/  x86: /'
    rc=${PIPESTATUS[0]}
    [ "$rc" = 77 ] && skip "bench/conformance.sh skipped (llama.cpp reference, mkmodel or vocab missing)"
done

BIN=$WORK/rtbench-$ARCH
lflags=(-static)
[ -n "$SYSROOT" ] && lflags+=(--sysroot="$SYSROOT")
"$CC_X" -std=c11 -O2 -Wall -Wextra -Werror "${lflags[@]}" -I"$ROOT/runtime/include" \
    -I"$ROOT/common/include" "$HERE/engine/rtbench.c" "$BUILD/runtime/libruntime.a" \
    "$BUILD/common/libcommon.a" -lpthread -lm -o "$BIN" ||
    die "cannot cross-compile bench/engine/rtbench.c"
unset QEMU_LD_PREFIX

line() { sed -n "s/^$1 [0-9]* *//p" "$2" | head -n1; }
maxdiff() {
    [ -s "$1" ] && [ -s "$2" ] || { echo missing; return; }
    [ "$(stat -L -c %s "$1")" = "$(stat -L -c %s "$2")" ] || { echo size; return; }
    paste <(od -An -v -tf4 -w4 "$1") <(od -An -v -tf4 -w4 "$2") | awk '
        { d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d } END { printf "%.3g\n", m }'
}
tol_of() { case "$1" in f32) echo 1e-4 ;; *) echo 1e-3 ;; esac; }

NPASS=0
NFAIL=0
printf '%-26s %2s %7s %9s %9s %6s %6s %s\n' row t tok d_ref d_x86 tol secs result
for row in $ROWS; do
    base=${row%--no-repack}
    flags=()
    [ "$base" != "$row" ] && flags+=(--no-repack)
    kv=${base##*-}
    [ "$kv" = f16 ] && flags+=(--kv-f16)
    mt=${base%-*}
    ty=${mt#*-}
    tol=$(tol_of "$ty")
    [ "$base" != "$row" ] && tol=1e-3
    m=$WORK/$mt.gguf
    if ! row_ok "$row"; then
        printf '%-26s %2s %s\n' "$row" - "FAIL (no x86 reference in $WORK)"
        NFAIL=$((NFAIL + 1))
        continue
    fi
    rp=$(line prompt "$WORK/$row.ref.txt"); rg=$(line gen "$WORK/$row.ref.txt")
    for t in $THREADS; do
        out=$WORK/$row.$ARCH.t$t
        t0=$(date +%s)
        if ! "$QEMU" "$BIN" ref "${flags[@]}" -m "$m" -p "$PROMPT" -n "$N" -t "$t" \
                -o "$out.txt" --logits-prompt "$out.prompt.f32" >"$out.log" 2>&1; then
            printf '%-26s %2s %s\n' "$row" "$t" "FAIL (run failed: $(head -n1 "$out.log"))"
            NFAIL=$((NFAIL + 1))
            continue
        fi
        secs=$(( $(date +%s) - t0 ))
        op=$(line prompt "$out.txt"); og=$(line gen "$out.txt")
        prefix=$(awk -v a="$rg" -v b="$og" -v n="$N" 'BEGIN { split(a, x, " "); split(b, y, " "); k = 0
            while (k < n && (k + 1) in x && (k + 1) in y && x[k + 1] == y[k + 1]) k++; print k }')
        [ "$rp" = "$op" ] || prefix=0
        dr=$(maxdiff "$WORK/$row.ref.prompt.f32" "$out.prompt.f32")
        dx=$(maxdiff "$WORK/$row.ours.prompt.f32" "$out.prompt.f32")
        res=PASS
        if [ "$prefix" -lt "$N" ] || ! awk -v a="$dr" -v t="$tol" 'BEGIN { exit !(a + 0 == a && a <= t) }'; then
            res=FAIL
        fi
        if [ $res = PASS ]; then NPASS=$((NPASS + 1)); else NFAIL=$((NFAIL + 1)); fi
        printf '%-26s %2s %3d/%-3d %9s %9s %6s %6s %s\n' "$row" "$t" "$prefix" "$N" "$dr" "$dx" \
            "$tol" "$secs" "$res"
    done
done
echo "conformance-cross: $ARCH under $QEMU (static driver), n=$N, threads $THREADS, vs llama.cpp x86_64; workdir $WORK: $NPASS passed, $NFAIL failed"
[ "$NFAIL" -eq 0 ]
