#!/usr/bin/env bash
# bench/conformance.sh - the built-in engine against llama.cpp (llref), for
# every architecture x weight type: greedy token ids and logits.
#
# Usage:
#   bench/conformance.sh [--build DIR] [--ours "CMD ..."] [--ref-bin DIR]
#                        [--archs "llama llama3 qwen2 qwen3"]
#                        [--types "f32 f16 q8_0 q4_0 q4_K q6_K"]
#                        [--prompt TEXT] [-n 64] [-t 2] [--std 0.08]
#                        [--workdir DIR] [--keep] [--no-repack-rows]
#                        [--kv "f32 f16"]
#   bench/conformance.sh --model M.gguf [--type T] ...   (one given model)
#
# Models are made with DIR/runtime/tools/mkmodel (DIR: --build, default
# build/dev) with real vocabularies from the llama.cpp source (npm cache):
#   llama   llama-spm vocab (SentencePiece, 32000), GQA 8/2 heads
#   llama3  llama-bpe vocab (128256), GQA 8/2, Llama 3 rope scaling (rope_freqs)
#   qwen2   qwen2 vocab (151936), q/k/v biases, GQA 8/2
#   qwen3   qwen2 vocab, q_norm/k_norm, GQA 8/2
# d=256, 4 layers, ffn 768, tied embeddings, weights N(0, std^2): std 0.08
# makes peaked logits (top-1 margin reported), 0.02 would give near-flat ones.
#
# "Ours" is, by default, bench/engine/rtbench (compiled here against DIR's
# libruntime.a + libcommon.a) running rt_engine_run_cli(), the code behind
# `flotilla-agent run-model --ref`; --ours CMD replaces it (e.g.
# "build/dev/agent/flotilla-agent run-model --ref"). Both sides: same text
# prompt, greedy (argmax, ties to lowest id), flash attention off, -t
# threads, the K/V cache type of the row (--kv: F32 rows, then F16 rows, the
# default of both engines; both sides get the same type, llref/ours --kv-f16).
#
# Per model, columns (kv: the K/V cache type of both engines):
#   tok      greedy tokens identical (common prefix) / n
#   d_prompt max |logit diff| at the last prompt position (one batch both)
#   d_final  max |logit diff| of the last generated token's logits, both
#            decoding token by token ("-" when the tokens differ: then the
#            two runs saw different inputs)
#   d_forced same position, teacher-forced: prompt + llref's gen[0..n-2] as
#            ids in one batch, ours vs llref
#   self     llama.cpp against itself at that position: its token-by-token
#            logits vs its teacher-forced batch (llama.cpp's own
#            batched-vs-unbatched spread, measured in this run)
#   margin   top1 - top2 of llref's final logits; max = its largest logit
#   tol      per type (see tol_of); PASS needs tok == n, d_prompt, d_final
#            and d_forced <= tol, and the same argmax at every compared
#            position
# Rows "q4_0*" / "q4_K*" (not with --no-repack-rows): the same model with
# llama.cpp's CPU weight repacking off (llref --no-repack: its ggml_vec_dot /
# tinyBLAS kernels) and ours with --no-repack (the same order), tol 1e-3.
# Exit: 0 all PASS, 1 a FAIL or a tool failure, 77 llama.cpp build, mkmodel or
# vocab files absent.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=$ROOT/build/dev
OURS=${FLOTILLA_OURS:-}
REFBIN=
ARCHS="llama llama3 qwen2 qwen3"
TYPES="f32 f16 q8_0 q4_0 q4_K q6_K"
PROMPT="Once upon a time, in a small village"
N=64
T=2
STD=0.08
WORK=
KEEP=0
REPACK_ROWS=1
MODEL=
MTYPE=
KVS="f32 f16"

# Tolerance on max |logit diff| per weight type (logits here reach ~5-7).
# The engine reproduces llama.cpp's x86 (AVX2) operation order: activation
# quantization, ggml_vec_dot_* for one token and llamafile tinyBLAS for a
# batch, the block order of the repacked Q4_0/Q4_K gemv kernels and, for
# the first nt - nt % 4 tokens of a batch, of the repacked Q4_K gemm (one
# FMA per 64 values), ggml_v_expf in softmax/silu, attention sums in ggml's
# order for F32 and F16 K/V, rope with GCC's FMA contraction, the last
# layer's FFN only for the output token (llama.cpp's inp_out_ids). All types
# come out bitwise (F32, F16, Q8_0, Q6_K, the --no-repack rows) or within
# float rounding (<= 2e-6, repacked Q4_0/Q4_K) in every column: tolerance
# 1e-3 (F32 1e-4), far below llama.cpp's own
# batched-vs-unbatched spread (self: 5e-6 F32, 1e-3..6e-3 F16, up to 0.2
# quantized).
tol_of() {
    case "$1" in
        f32) echo 1e-4 ;;
        q4_K) echo 1e-3 ;;
        *) echo 1e-3 ;;
    esac
}

die() { echo "conformance: error: $*" >&2; exit 1; }
skip() { echo "conformance: skipped: $*" >&2; exit 77; }

while [ $# -gt 0 ]; do
    case "$1" in
        --build) BUILD=${2:?}; shift 2 ;;
        --ours) OURS=${2:?}; shift 2 ;;
        --ref-bin) REFBIN=${2:?}; shift 2 ;;
        --archs) ARCHS=${2:?}; shift 2 ;;
        --types) TYPES=${2:?}; shift 2 ;;
        --prompt) PROMPT=${2:?}; shift 2 ;;
        -n) N=${2:?}; shift 2 ;;
        -t) T=${2:?}; shift 2 ;;
        --std) STD=${2:?}; shift 2 ;;
        --workdir) WORK=${2:?}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --no-repack-rows) REPACK_ROWS=0; shift ;;
        --kv) KVS=${2:?}; shift 2 ;;
        --model) MODEL=${2:?}; shift 2 ;;
        --type) MTYPE=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,50p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case "$N" in ''|*[!0-9]*) die "-n must be a positive integer" ;; esac
if [ "$N" -lt 1 ] || [ "$N" -gt 4096 ]; then die "-n must be 1..4096"; fi
case "$T" in ''|*[!0-9]*) die "-t must be a positive integer" ;; esac
for kv in $KVS; do case "$kv" in f32|f16) ;; *) die "--kv takes f32 and/or f16" ;; esac; done

if [ -z "$REFBIN" ]; then
    REFBIN=$("$HERE/llamacpp-ref.sh" --no-server 2>/dev/null) || skip "llama.cpp reference build unavailable (bench/llamacpp-ref.sh)"
fi
LLREF=$REFBIN/llref
[ -x "$LLREF" ] || skip "no llref in $REFBIN"
SRC=${FLOTILLA_CACHE:-$HOME/.cache/flotilla}/llama.cpp-src
VOC=$SRC/models

if [ -z "$WORK" ]; then
    WORK=$(mktemp -d /tmp/flotilla-conformance.XXXXXX) || die "mktemp failed"
    [ "$KEEP" = 1 ] || trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK" || die "cannot create $WORK"

if [ -z "$OURS" ]; then
    LIBRT=$BUILD/runtime/libruntime.a
    LIBCOMMON=$BUILD/common/libcommon.a
    [ -f "$LIBRT" ] && [ -f "$LIBCOMMON" ] \
        || skip "no $LIBRT / $LIBCOMMON (cmake --build $BUILD --target runtime)"
    ${CC:-cc} -std=c11 -O2 -Wall -Wextra -Werror -I"$ROOT/runtime/include" \
        -I"$ROOT/common/include" "$HERE/engine/rtbench.c" "$LIBRT" "$LIBCOMMON" \
        -lpthread -lm -o "$WORK/rtbench" || die "cannot compile bench/engine/rtbench.c"
    OURS="$WORK/rtbench ref"
fi

run() { # name cmd...
    local name=$1; shift
    if ! "$@" >"$WORK/$name.stdout" 2>"$WORK/$name.stderr"; then
        echo "conformance: $name failed: $(head -n1 "$WORK/$name.stderr") (cmd: $*)" >&2
        return 1
    fi
}

# f32cmp REF OURS -> "maxdiff argmax_ref argmax_ours margin_ref max_ref n"
f32cmp() {
    if [ ! -s "$1" ] || [ ! -s "$2" ]; then echo "missing -1 -2 0 0 0"; return; fi
    paste <(od -An -v -tf4 -w4 "$1") <(od -An -v -tf4 -w4 "$2") | awk '
        NF != 2 { bad = 1; next }
        { a = $1 + 0; b = $2 + 0; d = a - b; if (d < 0) d = -d
          if (d > m) m = d
          if (n == 0 || a > ma) { s2 = ma; ma = a; ia = n } else if (n == 1 || a > s2) s2 = a
          if (n == 0 || b > mb) { mb = b; ib = n }
          n++ }
        END { if (bad) print "size-mismatch -1 -2 0 0", n
              else printf "%.3g %d %d %.3g %.3g %d\n", m, ia, ib, ma - s2, ma, n }'
}

line() { sed -n "s/^$1 [0-9]* *//p" "$2" | head -n1; }

NPASS=0
NFAIL=0
printf '%-7s %-5s %-3s %7s %9s %9s %9s %9s %7s %6s %6s %s\n' arch type kv tok d_prompt d_final \
    d_forced self margin max tol result
# one_case ARCH TYPE MODEL KV [LLREF_FLAG]
one_case() {
    local arch=$1 type=$2 m=$3 kv=$4 rflag=${5:-} tag=$1-$2-$4${5:-}
    local tol; tol=$(tol_of "$type")
    local rx=()
    if [ -n "$rflag" ]; then rx=("$rflag"); type="$type*"; tol=1e-3; fi
    if [ "$kv" = f16 ]; then rx+=(--kv-f16); fi
    if ! run "$tag.ref" "$LLREF" "${rx[@]}" -m "$m" -p "$PROMPT" -n "$N" -t "$T" -o "$WORK/$tag.ref.txt" \
            --logits "$WORK/$tag.ref.final.f32" --logits-prompt "$WORK/$tag.ref.prompt.f32" ||
        ! run "$tag.ours" $OURS "${rx[@]}" -m "$m" -p "$PROMPT" -n "$N" -t "$T" -o "$WORK/$tag.ours.txt" \
            --logits "$WORK/$tag.ours.final.f32" --logits-prompt "$WORK/$tag.ours.prompt.f32"; then
        printf '%-7s %-5s %-3s %s\n' "$arch" "$type" "$kv" "FAIL (tool failed)"
        NFAIL=$((NFAIL + 1)); return
    fi
    local rp rg op og forced prefix
    rp=$(line prompt "$WORK/$tag.ref.txt"); rg=$(line gen "$WORK/$tag.ref.txt")
    op=$(line prompt "$WORK/$tag.ours.txt"); og=$(line gen "$WORK/$tag.ours.txt")
    forced=$(echo "$rp $rg" | awk '{ for (i = 1; i < NF; i++) printf "%s%s", (i > 1 ? "," : ""), $i }')
    # shellcheck disable=SC2086 # OURS is a command line on purpose
    run "$tag.forced" $OURS "${rx[@]}" -m "$m" -i "$forced" -n 1 -t "$T" -o "$WORK/$tag.forced.txt" \
        --logits-prompt "$WORK/$tag.forced.f32" || true
    run "$tag.self" "$LLREF" "${rx[@]}" -m "$m" -i "$forced" -n 1 -t "$T" -o "$WORK/$tag.self.txt" \
        --logits-prompt "$WORK/$tag.self.f32" || true
    prefix=$(awk -v a="$rg" -v b="$og" 'BEGIN {
        n = split(a, x, " "); m = split(b, y, " "); k = 0
        while (k < n && k < m && x[k + 1] == y[k + 1]) k++
        print k }')
    [ "$rp" = "$op" ] || prefix=0
    local dp iap iop mp xp n1 dg iag iog mg xg n4 df iaf iof mf xf n2 ds ias ios ms xs n3
    read -r dp iap iop mp xp n1 <<<"$(f32cmp "$WORK/$tag.ref.prompt.f32" "$WORK/$tag.ours.prompt.f32")"
    read -r dg iag iog mg xg n4 <<<"$(f32cmp "$WORK/$tag.ref.final.f32" "$WORK/$tag.ours.final.f32")"
    read -r df iaf iof mf xf n2 <<<"$(f32cmp "$WORK/$tag.self.f32" "$WORK/$tag.forced.f32")"
    read -r ds ias ios ms xs n3 <<<"$(f32cmp "$WORK/$tag.ref.final.f32" "$WORK/$tag.self.f32")"
    local ok=1
    [ "$prefix" -ge "$N" ] || { ok=0; dg=-; }
    [ "$iap" = "$iop" ] && [ "$iaf" = "$iof" ] || ok=0
    [ "$dg" = - ] || [ "$iag" = "$iog" ] || ok=0
    awk -v a="$dp" -v b="$df" -v c="$dg" -v t="$tol" 'BEGIN {
        if (c == "-") c = 0
        exit !(a + 0 == a && b + 0 == b && a <= t && b <= t && c <= t) }' || ok=0
    local res=PASS
    if [ "$ok" = 1 ]; then NPASS=$((NPASS + 1)); else NFAIL=$((NFAIL + 1)); res=FAIL; fi
    printf '%-7s %-5s %-3s %3d/%-3d %9s %9s %9s %9s %7s %6s %6s %s\n' "$arch" "$type" "$kv" "$prefix" "$N" \
        "$dp" "$dg" "$df" "$ds" "$mg" "$xg" "$tol" "$res"
}

if [ -n "$MODEL" ]; then
    [ -f "$MODEL" ] || die "model $MODEL not found"
    for kv in $KVS; do one_case model "${MTYPE:-?}" "$MODEL" "$kv"; done
else
    MK=$BUILD/runtime/tools/mkmodel
    [ -x "$MK" ] || skip "no $MK (cmake --build $BUILD --target mkmodel)"
    for arch in $ARCHS; do
        extra=()
        case "$arch" in
            llama) vocab=llama-spm; a=llama ;;
            llama3) vocab=llama-bpe; a=llama; extra=(--rope-scaling llama3 --rope-theta 500000) ;;
            qwen2) vocab=qwen2; a=qwen2 ;;
            qwen3) vocab=qwen2; a=qwen3 ;;
            *) die "unknown arch $arch" ;;
        esac
        [ -f "$VOC/ggml-vocab-$vocab.gguf" ] || skip "no vocab $VOC/ggml-vocab-$vocab.gguf (tests/fetch-llama-assets.sh)"
        for type in $TYPES; do
            m=$WORK/$arch-$type.gguf
            "$MK" --arch "$a" --vocab "$VOC/ggml-vocab-$vocab.gguf" --dim 256 --layers 4 \
                --heads 8 --kv-heads 2 --ffn 768 --ctx 4096 --std "$STD" --tie --seed 7 \
                --type "$type" "${extra[@]}" -o "$m" >"$WORK/mk.log" 2>&1 \
                || die "mkmodel $arch $type failed: $(head -n1 "$WORK/mk.log")"
            for kv in $KVS; do
                one_case "$arch" "$type" "$m" "$kv"
                case "$type" in
                    q4_0|q4_K) [ "$REPACK_ROWS" = 1 ] && one_case "$arch" "$type" "$m" "$kv" --no-repack ;;
                esac
            done
            [ "$KEEP" = 1 ] || rm -f "$m"
        done
    done
fi
echo "conformance: prompt \"$PROMPT\", n=$N, t=$T, std=$STD, K/V $KVS, flash attention off, workdir $WORK"
echo "conformance: $NPASS passed, $NFAIL failed"
[ "$NFAIL" -eq 0 ]
