#!/usr/bin/env bash
# Serving figures (Flotilla issue 6), on 127.0.0.1:
#  1. agent RSS without a model: `flotilla-agent run` on an empty state dir
#     with the HTTP API on, VmRSS after 1 s (target < 10 MiB).
#  2. tokens/s through the agent's HTTP API (POST /v1/completions, greedy,
#     BENCH_TOKENS (128) tokens, BENCH_REQS (5) requests, end to end: prompt +
#     generation + HTTP + runner IPC) against the engine called directly
#     (`flotilla-agent run-model`, same model, threads and context; its own
#     prompt + generation time, load excluded), median of each; ratio
#     (target >= 0.95x).
#  3. latency of a 1-token request, p50 / p99 over BENCH_N1 (100) requests.
#  4. swap: a client loops 1-token requests while v2 is installed through the
#     spool; the longest request latency during the swap vs the median of the
#     loop (the blip), and whether any request failed.
# The model: mkmodel llama dim 512, 8 layers, q8_0 (~27 MB); v2 a fine-tune.
#
#   bench/serve.sh [BUILD_DIR (build/dev)]
#   BENCH_THREADS (2), BENCH_LIMIT_S (whole run, 600)
set -euo pipefail
B=$(cd "${1:-build/dev}" && pwd) || { echo "serve bench: no build directory ${1:-build/dev}" >&2; exit 1; }
FL=$B/controller/cli/flotilla AGENT=$B/agent/flotilla-agent
MKMODEL=$B/runtime/tools/mkmodel FINETUNE=$B/runtime/tools/finetune
for x in "$FL" "$AGENT" "$MKMODEL" "$FINETUNE"; do
  [ -x "$x" ] || { echo "serve bench: $x not built" >&2; exit 1; }
done
for t in jq curl; do command -v $t >/dev/null || { echo "serve bench: $t not installed" >&2; exit 1; }; done
TOK=${BENCH_TOKENS:-128} REQS=${BENCH_REQS:-5} N1=${BENCH_N1:-100} THR=${BENCH_THREADS:-2}
tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/flotilla-bench-serve.XXXXXX")
svc= loader= dog=
cleanup() {
  local p
  for p in $loader $svc $dog; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "serve bench: interrupted (signal or BENCH_LIMIT_S)" >&2; exit 1' INT TERM
main=$$
( trap 'kill "$s" 2>/dev/null; exit 0' TERM; sleep "${BENCH_LIMIT_S:-600}" & s=$!; wait "$s" && kill -TERM "$main" ) \
  >/dev/null 2>&1 &
dog=$!
export FLOTILLA_LOG_LEVEL=warn
die() { echo "serve bench: $*" >&2; exit 1; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }'; }
pct() { sort -g | awk -v q="$1" '{ a[NR] = $1 } END { i = int(q * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; print a[i] }'; }
maxof() { sort -g | tail -n 1; }

# ------------------------------------------------------------ trust, models
cd "$tmp"
mkdir -p keys trust v1 v2 state/spool
"$FL" key generate keys/root.pem >/dev/null
"$FL" key generate keys/rel.pem >/dev/null
"$FL" keyring create --version 1 --expires-days 2 --threshold 1 --key "keys/rel.pub.pem:bench" -o keys/kr.json >/dev/null
"$FL" keyring sign keys/kr.json --key keys/root.pem -o trust/keyring.dsse.json >/dev/null
cp keys/root.pub.pem trust/root.pem
"$MKMODEL" --arch llama --vocab tiny --dim 512 --layers 8 --heads 8 --kv-heads 4 --ffn 1536 \
  --ctx 1024 --type q8_0 --seed 1 -o v1/model.gguf >/dev/null
"$FINETUNE" v1/model.gguf v2/model.gguf --layers 3 --seed 9 --scale 0.05 >/dev/null
created=$(date -u +%Y-%m-%dT%H:%M:%SZ) expires=$(date -u -d '+2 days' +%Y-%m-%dT%H:%M:%SZ)
for v in 1 2; do
  jq -n --arg c "$created" --arg e "$expires" --argjson s "$v" --argjson t "$THR" '{name: "bench",
    version: "\($s).0", sequence: $s, created: $c, expires: $e, compatibility: {backend: "gguf"},
    runtime: {threads: $t, context_length: 1024}}' >"t$v.json"
  "$FL" bundle create --template "t$v.json" --key keys/rel.pem -o "v$v.tar" "v$v/model.gguf" >/dev/null
done

# ------------------------------------------------------------ 1. RSS, no model
port=$((20000 + RANDOM % 20000))
cat >agent.conf <<EOC
[agent]
state_dir = $tmp/state
trust_dir = $tmp/trust
[serve]
listen = 127.0.0.1:$port
token = bench-token
EOC
"$AGENT" --config agent.conf run 2>agent.log &
svc=$!
api() { curl -s -m 60 -H "Authorization: Bearer bench-token" "$@"; }
URL=http://127.0.0.1:$port
up() { [ "$(api -o /dev/null -w '%{http_code}' "$URL/v1/status")" = 200 ]; }
wait_for() { local end=$((SECONDS + $1)); shift; while [ $SECONDS -lt $end ]; do "$@" && return 0; sleep 0.1; done; return 1; }
wait_for 10 up || die "agent API not up: $(tail -n 5 agent.log)"
sleep 1
rss0=$(awk '/^VmRSS/ { print $2 }' "/proc/$svc/status")

# ------------------------------------------------------------ 2. tokens/s
served() { [ "$(api "$URL/v1/status" | jq -r '.models.bench.version // empty')" = "$1" ]; }
cp v1.tar state/spool/.v1.part && mv state/spool/.v1.part state/spool/v1.tar
wait_for 60 served 1.0 || die "v1 not served: $(tail -n 5 agent.log)"
body() { printf '{"model":"bench","prompt":"Hello","max_tokens":%d,"temperature":0}' "$1"; }
api -o /dev/null -d "$(body 8)" "$URL/v1/completions" # warm up
: >http.txt
for _ in $(seq "$REQS"); do
  r=$(api -w '\n%{time_total}' -d "$(body "$TOK")" "$URL/v1/completions")
  n=$(head -n -1 <<<"$r" | jq -r .usage.completion_tokens)
  [ "$n" -gt 0 ] 2>/dev/null || die "bad completion: $r"
  awk -v n="$n" -v t="$(tail -n 1 <<<"$r")" 'BEGIN { printf "%.2f %d\n", n / t, n }' >>http.txt
done
: >eng.txt
for _ in $(seq "$REQS"); do
  "$AGENT" run-model v1/model.gguf --prompt Hello -n "$TOK" --temp 0 -t "$THR" -c 1024 >/dev/null 2>eng.err ||
    die "run-model failed: $(cat eng.err)"
  # "prompt P tokens in A ms (...); generated N tokens in G ms (...)"
  awk '/generated/ { for (i = 1; i <= NF; i++) { if ($i == "prompt") a = $(i + 4); if ($i == "generated") { n = $(i + 1); g = $(i + 4) } }
        printf "%.2f %d\n", n / ((a + g) / 1000), n }' eng.err >>eng.txt
done
http_tps=$(cut -d' ' -f1 http.txt | median) eng_tps=$(cut -d' ' -f1 eng.txt | median)
http_n=$(cut -d' ' -f2 http.txt | median) eng_n=$(cut -d' ' -f2 eng.txt | median)

# ------------------------------------------------------------ 3. 1-token latency
: >lat1.txt
for _ in $(seq "$N1"); do
  api -o /dev/null -w '%{time_total}\n' -d "$(body 1)" "$URL/v1/completions" >>lat1.txt
done
p50=$(pct 0.5 <lat1.txt) p99=$(pct 0.99 <lat1.txt)

# ------------------------------------------------------------ 4. swap blip
loop() {
  local i=0
  while [ ! -e stop ] && [ $i -lt 5000 ]; do
    i=$((i + 1))
    api -o /dev/null -w '%{http_code} %{time_total}\n' -d "$(body 1)" "$URL/v1/completions" >>swap.txt || echo "000 0" >>swap.txt
  done
}
: >swap.txt
loop &
loader=$!
sleep 1
before=$(wc -l <swap.txt)
t0=$(date +%s.%N)
cp v2.tar state/spool/.v2.part && mv state/spool/.v2.part state/spool/v2.tar
wait_for 60 served 2.0 || die "v2 not served: $(tail -n 5 agent.log)"
t1=$(date +%s.%N)
during=$(wc -l <swap.txt)
sleep 1
touch stop
wait "$loader"
loader=
failed=$(grep -vc '^200 ' swap.txt || true)
med=$(awk '{ print $2 }' swap.txt | median)
swapmax=$(sed -n "$((before + 1)),$((during + 1))p" swap.txt | awk '{ print $2 }' | maxof)

ms() { awk -v s="$1" 'BEGIN { printf "%.1f ms", s * 1000 }'; }
echo "model: llama dim 512, 8 layers, q8_0 ($(stat -c %s v1/model.gguf) bytes), $THR threads, context 1024"
echo "agent RSS with no model loaded (empty state, API on): $(awk -v k="$rss0" 'BEGIN { printf "%.1f MiB", k / 1024 }') (target < 10 MiB: $([ "$rss0" -lt 10240 ] && echo met || echo NOT met))"
echo "engine direct (run-model, prompt + generation, $eng_n tokens, median of $REQS): $eng_tps tok/s"
echo "agent HTTP /v1/completions (end to end, $http_n tokens, median of $REQS): $http_tps tok/s"
awk -v h="$http_tps" -v e="$eng_tps" 'BEGIN { x = h / e; printf "ratio HTTP / engine: %.3fx (target >= 0.95x: %s)\n", x, (x >= 0.95 ? "met" : "NOT met") }'
echo "1-token request latency over $N1: p50 $(ms "$p50"), p99 $(ms "$p99")"
echo "swap v1 -> v2 under a 1-token request loop: spool to serving $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f s", b - a }')," \
  "$((during - before)) requests during it, longest $(ms "$swapmax") vs loop median $(ms "$med")" \
  "(blip $(awk -v m="$swapmax" -v d="$med" 'BEGIN { printf "%.1f ms, %.1fx", (m - d) * 1000, m / d }')), $failed of $(wc -l <swap.txt) requests failed"
