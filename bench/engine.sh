#!/usr/bin/env bash
# bench/engine.sh - speed of the built-in engine vs llama.cpp, same models,
# same threads, same run.
#
# Usage: bench/engine.sh [--build DIR] [--ref-bin DIR] [--types "f32 q8_0 q4_K"]
#                        [--sizes "25m 135m"] [--threads "1 2"] [-p 128] [-n 32]
#                        [-r 3] [--workdir DIR] [--keep]
#
# Models (DIR/runtime/tools/mkmodel, llama-spm vocabulary, random weights,
# untied output):
#   25m   d=256, 10 layers, 8/2 heads (GQA), ffn 768   (~24M parameters)
#   135m  d=768, 14 layers, 12/4 heads (GQA), ffn 2048 (~137M parameters)
# llama.cpp: llama-bench -p P -n N -r R -t T (its defaults otherwise: batch
# 2048, K/V F16, flash attention auto); ours: bench/engine/rtbench (compiled
# here against DIR's libruntime.a): P pseudo-random prompt tokens in one eval,
# then N single-token evals, K/V F16, best of R. Columns: prompt (pp) and
# decode (tg) tokens/s of both and ours/llama.cpp ratios; peak RSS of our
# process (getrusage) next to the model file size.
# Exit 77 if the llama.cpp build or mkmodel is absent.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=$ROOT/build/dev
REFBIN=
TYPES="f32 q8_0 q4_K"
SIZES="25m 135m"
THREADS="1 2"
P=128
N=32
R=3
WORK=
KEEP=0

die() { echo "engine-bench: error: $*" >&2; exit 1; }
skip() { echo "engine-bench: skipped: $*" >&2; exit 77; }

while [ $# -gt 0 ]; do
    case "$1" in
        --build) BUILD=${2:?}; shift 2 ;;
        --ref-bin) REFBIN=${2:?}; shift 2 ;;
        --types) TYPES=${2:?}; shift 2 ;;
        --sizes) SIZES=${2:?}; shift 2 ;;
        --threads) THREADS=${2:?}; shift 2 ;;
        -p) P=${2:?}; shift 2 ;;
        -n) N=${2:?}; shift 2 ;;
        -r) R=${2:?}; shift 2 ;;
        --workdir) WORK=${2:?}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
for v in "$P" "$N" "$R"; do
    case "$v" in ''|*[!0-9]*) die "-p, -n, -r must be positive integers" ;; esac
done

if [ -z "$REFBIN" ]; then
    REFBIN=$("$HERE/llamacpp-ref.sh" --no-server 2>/dev/null) || skip "llama.cpp reference build unavailable"
fi
LB=$REFBIN/llama-bench
[ -x "$LB" ] || skip "no llama-bench in $REFBIN"
MK=$BUILD/runtime/tools/mkmodel
[ -x "$MK" ] || skip "no $MK (cmake --build $BUILD --target mkmodel)"
VOCAB=${FLOTILLA_CACHE:-$HOME/.cache/flotilla}/llama.cpp-src/models/ggml-vocab-llama-spm.gguf
[ -f "$VOCAB" ] || skip "no $VOCAB (tests/fetch-llama-assets.sh)"
[ -f "$BUILD/runtime/libruntime.a" ] || skip "no $BUILD/runtime/libruntime.a"

if [ -z "$WORK" ]; then
    WORK=$(mktemp -d /tmp/flotilla-engine-bench.XXXXXX) || die "mktemp failed"
    [ "$KEEP" = 1 ] || trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK" || die "cannot create $WORK"
${CC:-cc} -std=c11 -O2 -Wall -Wextra -Werror -I"$ROOT/runtime/include" -I"$ROOT/common/include" \
    "$HERE/engine/rtbench.c" "$BUILD/runtime/libruntime.a" "$BUILD/common/libcommon.a" \
    -lpthread -lm -o "$WORK/rtbench" || die "cannot compile bench/engine/rtbench.c"

echo "engine-bench: $(date -u +%FT%TZ) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), -p $P -n $N, best of $R"
printf '%-5s %-5s %2s %9s %9s %6s %8s %8s %6s %9s %9s\n' size type t pp_ours pp_llama ratio \
    tg_ours tg_llama ratio rss_MiB file_MiB
for size in $SIZES; do
    case "$size" in
        25m) shape=(--dim 256 --layers 10 --heads 8 --kv-heads 2 --ffn 768) ;;
        135m) shape=(--dim 768 --layers 14 --heads 12 --kv-heads 4 --ffn 2048) ;;
        *) die "unknown size $size (25m, 135m)" ;;
    esac
    for type in $TYPES; do
        m=$WORK/$size-$type.gguf
        "$MK" --arch llama --vocab "$VOCAB" "${shape[@]}" --type "$type" --seed 3 -o "$m" \
            >"$WORK/mk.log" 2>&1 || die "mkmodel $size $type: $(head -n1 "$WORK/mk.log")"
        for t in $THREADS; do
            ours=$("$WORK/rtbench" bench -m "$m" -t "$t" -p "$P" -n "$N" -r "$R" --kv-f16) \
                || die "rtbench failed on $m"
            "$LB" -m "$m" -t "$t" -p "$P" -n "$N" -r "$R" -o csv >"$WORK/lb.csv" 2>"$WORK/lb.err" \
                || die "llama-bench failed: $(tail -n1 "$WORK/lb.err")"
            # csv: header with n_prompt, n_gen, avg_ts columns; one row per test
            read -r lpp ltg <<<"$(awk -F, '
                NR == 1 { for (i = 1; i <= NF; i++) { h = $i; gsub(/"/, "", h); c[h] = i }; next }
                { gsub(/"/, ""); p = $c["n_prompt"]; g = $c["n_gen"]; ts = $c["avg_ts"]
                  if (p > 0 && g == 0) pp = ts; if (g > 0 && p == 0) tg = ts }
                END { print pp + 0, tg + 0 }' "$WORK/lb.csv")"
            echo "$ours" | awk -v size="$size" -v type="$type" -v t="$t" -v lpp="$lpp" -v ltg="$ltg" '{
                for (i = 1; i < NF; i += 2) v[$i] = $(i + 1)
                printf "%-5s %-5s %2d %9.1f %9.1f %5.2fx %8.1f %8.1f %5.2fx %9.1f %9.1f\n",
                    size, type, t, v["pp_tok_s"], lpp, (lpp > 0 ? v["pp_tok_s"] / lpp : 0),
                    v["tg_tok_s"], ltg, (ltg > 0 ? v["tg_tok_s"] / ltg : 0),
                    v["peak_rss_kib"] / 1024, v["file_bytes"] / 1048576 }'
        done
        [ "$KEEP" = 1 ] || rm -f "$m"
    done
done
echo "engine-bench: load after $(cut -d' ' -f1-3 /proc/loadavg)"
