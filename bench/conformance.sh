#!/usr/bin/env bash
# bench/conformance.sh - compare our engine against llama.cpp (llref) on one
# GGUF model + prompt: greedy token ids and logits.
#
# Usage:
#   bench/conformance.sh [--model M.gguf] [--prompt TEXT | --ids "1,2,3"] [-n 64]
#                        [-t 2] [--tol 1e-3] [--min-match 64] [--workdir DIR]
#                        [--ours "CMD ..."] [--ref-bin DIR]
#
# Without --model a tiny random llama GGUF is made with
# bench/conformance/mk_tiny_llama.py (needs /usr/bin/python3 + python3-numpy).
#
# ---- HOOK FOR OUR ENGINE -------------------------------------------------
# --ours CMD (or env FLOTILLA_OURS) is OUR engine's command, intended to be
#     flotilla-agent run-model
# It is invoked exactly like llref (bench/conformance/llref.c), with these
# arguments appended, and must honour the same contract:
#     -m MODEL (-p TEXT | -i IDS) -n N -t T -o REPORT
#        [--logits FILE] [--logits-prompt FILE]
#   REPORT: text lines "prompt <n> <ids...>" and "gen <n> <ids...>" (others ignored)
#   --logits FILE:        n_vocab raw little-endian float32, the distribution
#                         from which the LAST generated token was picked
#   --logits-prompt FILE: same, at the last prompt position
#   Greedy = argmax of raw logits, ties -> lowest id, EOG does not stop.
#   -i IDS: comma separated ids, used as is (no BOS added).
# Without --ours the harness runs in SELF-CHECK mode: "ours" is llref again,
# which proves the harness end to end (tokens must match 100%).
# ---------------------------------------------------------------------------
#
# Checks (each PASS/FAIL):
#   1 prompt tokens identical (text prompts only)
#   2 greedy tokens: common prefix >= min(--min-match, n) (default 64)
#   3 logits at the last prompt position: max |diff| <= tol, same argmax
#   4 final logits, teacher-forced: ours gets -i (prompt + ref gen[0..n-2]) -n 1
#     and its --logits-prompt is compared with llref's --logits (so the
#     comparison is meaningful even when greedy paths diverged)
# Exit: 0 all passed, 1 a check failed or a tool failed, 77 prerequisites missing.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODEL=
PROMPT="Once upon a time, in a small village"
IDS=
N=64
T=2
TOL=1e-3
MIN_MATCH=64
WORK=
OURS=${FLOTILLA_OURS:-}
REFBIN=

die() { echo "conformance: error: $*" >&2; exit 1; }
skip() { echo "conformance: skipped: $*" >&2; exit 77; }

while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL=${2:?}; shift 2 ;;
        --prompt) PROMPT=${2?}; IDS=; shift 2 ;;
        --ids) IDS=${2:?}; shift 2 ;;
        -n) N=${2:?}; shift 2 ;;
        -t) T=${2:?}; shift 2 ;;
        --tol) TOL=${2:?}; shift 2 ;;
        --min-match) MIN_MATCH=${2:?}; shift 2 ;;
        --workdir) WORK=${2:?}; shift 2 ;;
        --ours) OURS=${2:?}; shift 2 ;;
        --ref-bin) REFBIN=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case "$N" in ''|*[!0-9]*) die "-n must be a positive integer" ;; esac
if [ "$N" -lt 1 ] || [ "$N" -gt 4096 ]; then die "-n must be 1..4096"; fi

if [ -z "$REFBIN" ]; then
    REFBIN=$("$HERE/llamacpp-ref.sh" --no-server) || skip "llama.cpp reference build unavailable"
fi
LLREF=$REFBIN/llref
[ -x "$LLREF" ] || die "no llref in $REFBIN"

if [ -z "$WORK" ]; then
    WORK=$(mktemp -d /tmp/flotilla-conformance.XXXXXX) || die "mktemp failed"
fi
mkdir -p "$WORK" || die "cannot create $WORK"

if [ -z "$MODEL" ]; then
    if ! /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
        skip "no /usr/bin/python3 with numpy (apt-get install python3-numpy) to make the tiny model"
    fi
    MODEL=$WORK/tiny-llama.gguf
    /usr/bin/python3 "$HERE/conformance/mk_tiny_llama.py" "$MODEL" >/dev/null \
        || die "mk_tiny_llama.py failed"
fi
[ -f "$MODEL" ] || die "model $MODEL not found"

SELF=0
if [ -z "$OURS" ]; then
    SELF=1
    OURS=$LLREF
    echo "conformance: SELF-CHECK mode (no --ours): comparing llref with itself"
fi

if [ -n "$IDS" ]; then INPUT=(-i "$IDS"); else INPUT=(-p "$PROMPT"); fi

run() { # name cmd...
    local name=$1; shift
    if ! "$@" >"$WORK/$name.stdout" 2>"$WORK/$name.stderr"; then
        die "$name failed: $(head -n1 "$WORK/$name.stderr") (cmd: $*)"
    fi
}

run ref "$LLREF" -m "$MODEL" "${INPUT[@]}" -n "$N" -t "$T" -o "$WORK/ref.txt" \
    --logits "$WORK/ref.final.f32" --logits-prompt "$WORK/ref.prompt.f32"
# shellcheck disable=SC2086 # OURS is a command line on purpose
run ours $OURS -m "$MODEL" "${INPUT[@]}" -n "$N" -t "$T" -o "$WORK/ours.txt" \
    --logits "$WORK/ours.final.f32" --logits-prompt "$WORK/ours.prompt.f32"

line() { sed -n "s/^$1 [0-9]* *//p" "$2" | head -n1; }
ref_prompt=$(line prompt "$WORK/ref.txt")
ours_prompt=$(line prompt "$WORK/ours.txt")
ref_gen=$(line gen "$WORK/ref.txt")
ours_gen=$(line gen "$WORK/ours.txt")

# teacher-forced final position: prompt + ref gen[0..n-2]
forced=$(echo "$ref_prompt $ref_gen" | awk '{ for (i = 1; i < NF; i++) printf "%s%s", (i > 1 ? "," : ""), $i }')
# shellcheck disable=SC2086 # OURS is a command line on purpose
run forced $OURS -m "$MODEL" -i "$forced" -n 1 -t "$T" -o "$WORK/forced.txt" \
    --logits-prompt "$WORK/forced.prompt.f32"

PASS=0
FAIL=0
check() { # ok? message
    if [ "$1" = 1 ]; then PASS=$((PASS + 1)); echo "PASS  $2"; else FAIL=$((FAIL + 1)); echo "FAIL  $2"; fi
}

# 1 prompt tokens
if [ -z "$IDS" ]; then
    [ "$ref_prompt" = "$ours_prompt" ] && ok=1 || ok=0
    check "$ok" "prompt tokens identical ($(echo "$ref_prompt" | wc -w) tokens)"
fi

# 2 greedy tokens
prefix=$(awk -v a="$ref_gen" -v b="$ours_gen" 'BEGIN {
    n = split(a, x, " "); m = split(b, y, " "); k = 0
    while (k < n && k < m && x[k + 1] == y[k + 1]) k++
    print k }')
ngen=$(echo "$ref_gen" | wc -w)
need=$MIN_MATCH
[ "$need" -gt "$N" ] && need=$N
[ "$prefix" -ge "$need" ] && ok=1 || ok=0
check "$ok" "greedy tokens: $prefix of $ngen identical (need >= $need)"

# logits compare: prints "maxdiff argmax_a argmax_b n"
cmp_f32() {
    if [ ! -s "$1" ] || [ ! -s "$2" ]; then echo "missing 0 0 0"; return; fi
    paste <(od -An -v -tf4 -w4 "$1") <(od -An -v -tf4 -w4 "$2") | awk '
        NF != 2 { bad = 1; next }
        { a = $1 + 0; b = $2 + 0; d = a - b; if (d < 0) d = -d
          if (d > m) m = d
          if (n == 0 || a > ma) { ma = a; ia = n }
          if (n == 0 || b > mb) { mb = b; ib = n }
          n++ }
        END { if (bad) print "size-mismatch 0 0", n; else printf "%.6g %d %d %d\n", m, ia, ib, n }'
}
logits_check() { # label fileA fileB
    local d ia ib n ok=0
    read -r d ia ib n <<<"$(cmp_f32 "$2" "$3")"
    if [ "$d" != missing ] && [ "$d" != size-mismatch ] && [ "$ia" = "$ib" ] \
        && awk -v d="$d" -v t="$TOL" 'BEGIN { exit !(d <= t) }'; then ok=1; fi
    check "$ok" "$1: max|diff|=$d (tol $TOL) argmax ref=$ia ours=$ib n_vocab=$n"
}
logits_check "logits at last prompt position" "$WORK/ref.prompt.f32" "$WORK/ours.prompt.f32"
logits_check "final logits (teacher-forced, pos $(echo "$forced" | tr ',' ' ' | wc -w))" \
    "$WORK/ref.final.f32" "$WORK/forced.prompt.f32"

echo "conformance: model=$MODEL n=$N t=$T workdir=$WORK self_check=$SELF"
sed -n 's/^timing /ref timing: /p' "$WORK/ref.txt"
echo "conformance: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
