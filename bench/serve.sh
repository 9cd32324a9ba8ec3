#!/usr/bin/env bash
# Serving figures (Flotilla issue 6), on 127.0.0.1:
#  1. agent RSS without a model: `flotilla-agent run` on an empty state dir
#     with the HTTP API on, VmRSS after 1 s, before any request (target <
#     10 MiB); and again once the API has answered (libmicrohttpd and its
#     TLS stack are loaded at the first connection: docs/serving.md).
#     And, when mosquitto is installed, the same agent with [mqtt] connected
#     over TLS to a local broker (packaging/mosquitto/start-broker.sh), idle
#     (reported, no target: the issue's figure is the agent without MQTT).
#  2. tokens/s through the agent's HTTP API (POST /v1/completions, greedy,
#     prompt "Hello", BENCH_TOKENS (128) tokens, end to end as curl sees it:
#     HTTP + runner IPC + prompt + generation) against the engine called
#     directly: bench/serve_engine_bench, the same model loaded once in
#     process with the runner's backend options (threads, context, KV type),
#     the same request timed around rt_backend_generate(). Both sides warm
#     (one full request each first: weights paged in, prompt cache, the
#     runner and the API past their first request), then BENCH_REQS (15)
#     runs of each, interleaved so both see the same machine load; median
#     and best of each; the ratio (target >= 0.95x) is the median over the
#     pairs of HTTP run / the engine run just before it. And tokens per
#     CPU second of both (agent + runner utime + stime from /proc around
#     each HTTP request; the engine's getrusage), which other processes on
#     a shared machine disturb much less than wall time.
#  3. latency of a 1-token request, p50 / p99 over BENCH_N1 (100) requests,
#     and of the same request to the warm engine (interleaved): the
#     difference of the p50s is the fixed cost per request (curl's start,
#     TCP connect, HTTP, JSON, the runner's socket).
#  4. swap: a client loops 1-token requests while v2 is installed through the
#     spool; the longest request latency during the swap vs the median of the
#     loop (the blip), and whether any request failed.
#  5. tabular backend (xgboost, when libxgboost0 is installed): a 2-feature
#     binary:logistic model "fraud" installed beside "bench"; POST
#     /v1/predict with one row per request from a bounded python3 client
#     (BENCH_CONNS (4) keep-alive connections, BENCH_PREDICT_N (4000)
#     requests or BENCH_PREDICT_S (10) s, whichever ends first): requests/s,
#     p50 / p99, errors; the same client on GET /healthz (HTTP alone) as the
#     reference measured in the same run, and the ratio of the two.
# The model: mkmodel llama dim 512, 8 layers, q8_0 (~27 MB); v2 a fine-tune.
#
#   bench/serve.sh [BUILD_DIR (build/dev)]
#   BENCH_THREADS (2), BENCH_LIMIT_S (whole run, 600)
set -euo pipefail
B=$(cd "${1:-build/dev}" && pwd) || { echo "serve bench: no build directory ${1:-build/dev}" >&2; exit 1; }
FL=$B/controller/cli/flotilla AGENT=$B/agent/flotilla-agent ENGINE=$B/bench/serve_engine_bench
MKMODEL=$B/runtime/tools/mkmodel FINETUNE=$B/runtime/tools/finetune
for x in "$FL" "$AGENT" "$ENGINE" "$MKMODEL" "$FINETUNE"; do
  [ -x "$x" ] || { echo "serve bench: $x not built" >&2; exit 1; }
done
for t in jq curl; do command -v $t >/dev/null || { echo "serve bench: $t not installed" >&2; exit 1; }; done
TOK=${BENCH_TOKENS:-128} REQS=${BENCH_REQS:-15} N1=${BENCH_N1:-100} THR=${BENCH_THREADS:-2}
tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/flotilla-bench-serve.XXXXXX")
svc= loader= dog= mqa= broker= eng_pid=
SRC=$(cd "$(dirname "$0")/.." && pwd)
cleanup() {
  local p
  for p in $loader $eng_pid $svc $mqa $dog; do kill "$p" 2>/dev/null || true; done
  [ -z "$broker" ] || "$SRC/packaging/mosquitto/stop-broker.sh" "$tmp/pki" >/dev/null 2>&1 || true
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
"$FL" keyring create --version 1 --expires-days 2 --threshold 1 --key "keys/rel.pub.pem:bench,fraud" -o keys/kr.json >/dev/null
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
FLOTILLA_LOG_LEVEL=info "$AGENT" --config agent.conf run 2>agent.log &
svc=$!
api() { curl -s -m 60 -H "Authorization: Bearer bench-token" "$@"; }
URL=http://127.0.0.1:$port
up() { [ "$(api -o /dev/null -w '%{http_code}' "$URL/v1/status")" = 200 ]; }
wait_for() { local end=$((SECONDS + $1)); shift; while [ $SECONDS -lt $end ]; do "$@" && return 0; sleep 0.1; done; return 1; }
# ready when it logs its listeners (a request would load the HTTP stack)
listening() { grep -qs "local API on" agent.log; }
wait_for 10 listening || die "agent API not up: $(tail -n 5 agent.log)"
sleep 1
rss0=$(awk '/^VmRSS/ { print $2 }' "/proc/$svc/status")
wait_for 10 up || die "agent API not answering: $(tail -n 5 agent.log)"
sleep 0.5
rss1=$(awk '/^VmRSS/ { print $2 }' "/proc/$svc/status")
# the same with [mqtt] up (TLS to a local broker), idle
rss_mq=
if command -v mosquitto >/dev/null && [ -x "$SRC/packaging/mosquitto/start-broker.sh" ]; then
  chmod o+x "$tmp" # the broker runs as user mosquitto
  P=$tmp/pki
  "$FL" pki init --dir "$P" >/dev/null
  "$FL" pki issue-server --dir "$P" --dns localhost --ip 127.0.0.1 >/dev/null
  "$FL" pki issue-device dev1 --dir "$P" >/dev/null
  for _ in 1 2 3 4 5; do
    mport=$((20000 + RANDOM % 20000))
    FL_BROKER_WAIT_S=10 "$SRC/packaging/mosquitto/start-broker.sh" "$P" "$mport" >broker.out 2>&1 && { broker=1; break; }
  done
  [ -n "$broker" ] || die "broker did not start: $(tail -n 3 broker.out)"
  mkdir -p mq/state
  sed -e "s|$tmp/state|$tmp/mq/state|" -e "s|127.0.0.1:$port|127.0.0.1:$((port + 1))|" agent.conf >mq/agent.conf
  printf '[mqtt]\nuri = ssl://127.0.0.1:%s\nca = %s/ca.crt\ncert = %s/devices/dev1.crt\nkey = %s/devices/dev1.key\n' \
    "$mport" "$P" "$P" "$P" >>mq/agent.conf
  sed -i 's|^\[agent\]$|[agent]\nid = dev1|' mq/agent.conf
  FLOTILLA_LOG_LEVEL=info "$AGENT" --config mq/agent.conf run 2>mq/agent.log &
  mqa=$!
  mq_up() { grep -qs "mqtt: connected" mq/agent.log; }
  wait_for 20 mq_up || die "agent with [mqtt] not connected: $(tail -n 5 mq/agent.log)"
  sleep 1
  rss_mq=$(awk '/^VmRSS/ { print $2 }' "/proc/$mqa/status")
  kill "$mqa"; wait "$mqa" 2>/dev/null || true; mqa=
  "$SRC/packaging/mosquitto/stop-broker.sh" "$P" >/dev/null 2>&1 || true; broker=
fi

# ------------------------------------------------------------ 2. tokens/s
served() { [ "$(api "$URL/v1/status" | jq -r '.models.bench.version // empty')" = "$1" ]; }
cp v1.tar state/spool/.v1.part && mv state/spool/.v1.part state/spool/v1.tar
wait_for 60 served 1.0 || die "v1 not served: $(tail -n 5 agent.log)"
body() { printf '{"model":"bench","prompt":"Hello","max_tokens":%d,"temperature":0}' "$1"; }
# The reference: the engine in process, loaded once, warm (serve_engine_bench,
# the runner's backend options), one request per line we send it.
coproc ENG { exec "$ENGINE" v1/model.gguf "$THR" 1024 Hello "$TOK" 2>eng.err; }
eng_pid=$ENG_PID
read -r -t 60 line <&"${ENG[0]}" && [ "$line" = ready ] || die "serve_engine_bench: $(cat eng.err)"
eng_run() { echo run >&"${ENG[1]}"; read -r -t 300 line <&"${ENG[0]}" || die "serve_engine_bench: $(cat eng.err)"; echo "$line"; }
# CPU time (ms) of the agent and its runner so far: utime + stime of both
cpu_of() { awk -v hz="$HZ" '{ sub(/^.*\) /, ""); s += $12 + $13 } END { printf "%.1f", s * 1000 / hz }' "/proc/$svc/stat" "/proc/$runner/stat"; }
http_run() {
  local r n c0 c1
  c0=$(cpu_of)
  r=$(api -w '\n%{time_total}' -d "$(body "$TOK")" "$URL/v1/completions")
  c1=$(cpu_of)
  n=$(head -n -1 <<<"$r" | jq -r .usage.completion_tokens)
  [ "$n" -gt 0 ] 2>/dev/null || die "bad completion: $r"
  awk -v n="$n" -v t="$(tail -n 1 <<<"$r")" -v c="$(awk -v a="$c0" -v b="$c1" 'BEGIN { print b - a }')" \
    'BEGIN { printf "%.2f %d %.1f %.1f\n", n / t, n, t * 1000, c }'
}
HZ=$(getconf CLK_TCK)
runner=$(api "$URL/v1/status" | jq -r .models.bench.pid)
[ -r "/proc/$runner/stat" ] || die "no runner process for bench"
# warm both sides with a full request (pages of the weights, KV cache, the
# runner's and the API's first-request costs), then interleave R each
eng_run >/dev/null
http_run >/dev/null
: >http.txt
: >eng.txt
for _ in $(seq "$REQS"); do
  eng_run >>eng.txt
  http_run >>http.txt
done
paste -d' ' eng.txt http.txt >pairs.txt
http_tps=$(cut -d' ' -f1 http.txt | median) eng_tps=$(cut -d' ' -f1 eng.txt | median)
http_best=$(cut -d' ' -f1 http.txt | maxof) eng_best=$(cut -d' ' -f1 eng.txt | maxof)
http_n=$(cut -d' ' -f2 http.txt | median) eng_n=$(cut -d' ' -f2 eng.txt | median)
# each HTTP run against the engine run just before it (same machine load)
pair_ratio=$(awk '{ print $5 / $1 }' pairs.txt | median)
# tokens per CPU second: agent + runner vs the engine's process, summed
cpu_ratio=$(awk '{ ne += $2; ce += $4; nh += $6; ch += $8 } END { printf "%.3f %.1f %.1f", (nh / ch) / (ne / ce), ne * 1000 / ce, nh * 1000 / ch }' pairs.txt)

# ------------------------------------------------------------ 3. 1-token latency
: >lat1.txt
: >eng1.txt
for _ in $(seq "$N1"); do
  api -o /dev/null -w '%{time_total}\n' -d "$(body 1)" "$URL/v1/completions" >>lat1.txt
  echo "run 1" >&"${ENG[1]}"
  read -r -t 60 line <&"${ENG[0]}" || die "serve_engine_bench: $(cat eng.err)"
  awk '{ printf "%.6f\n", $3 / 1000 }' <<<"$line" >>eng1.txt
done
echo quit >&"${ENG[1]}"
wait "$eng_pid" 2>/dev/null || true
eng_pid=
p50=$(pct 0.5 <lat1.txt) p99=$(pct 0.99 <lat1.txt)
e50=$(pct 0.5 <eng1.txt) e99=$(pct 0.99 <eng1.txt)

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

# ------------------------------------------------------------ 5. tabular /v1/predict
# hammer PATH BODY|-: "requests errors seconds req/s p50_s p99_s" over
# BENCH_CONNS keep-alive connections (one thread each), bounded in count and time.
cat >hammer.py <<'EOP'
import http.client, sys, threading, time
port, path, body, conns, total, secs, token = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
lat, errs, lock = [], [0], threading.Lock()
left = [total]
deadline = time.monotonic() + secs
def worker():
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
    h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    mine = []
    while time.monotonic() < deadline:
        with lock:
            if left[0] <= 0:
                break
            left[0] -= 1
        t = time.monotonic()
        try:
            if body == "-":
                c.request("GET", path, headers=h)
            else:
                c.request("POST", path, body=body, headers=h)
            r = c.getresponse()
            r.read()
            ok = r.status == 200
        except Exception:
            ok = False
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
        if ok:
            mine.append(time.monotonic() - t)
        else:
            with lock:
                errs[0] += 1
    with lock:
        lat.extend(mine)
t0 = time.monotonic()
ts = [threading.Thread(target=worker) for _ in range(conns)]
for t in ts: t.start()
for t in ts: t.join()
el = time.monotonic() - t0
lat.sort()
q = lambda p: lat[min(len(lat) - 1, max(0, int(p * len(lat) + 0.999999) - 1))] if lat else 0
print("%d %d %.3f %.1f %.6f %.6f" % (len(lat), errs[0], el, len(lat) / el, q(0.5), q(0.99)))
EOP
CONNS=${BENCH_CONNS:-4} PN=${BENCH_PREDICT_N:-4000} PS=${BENCH_PREDICT_S:-10}
tab=
if ls /usr/lib/*/libxgboost.so.0 >/dev/null 2>&1 && command -v python3 >/dev/null; then
  mkdir -p fraud
  # margin = +-2 by f0 < 0.5, +-1 by f1 < 0.3 (as tests/integration/serve_xgboost.sh)
  stump() {
    printf '{"base_weights":[0.0,%s,%s],"categories":[],"categories_nodes":[],"categories_segments":[],"categories_sizes":[],"default_left":[1,0,0],"id":%s,"left_children":[1,-1,-1],"loss_changes":[1.0,0.0,0.0],"parents":[2147483647,0,0],"right_children":[2,-1,-1],"split_conditions":[%s,%s,%s],"split_indices":[%s,0,0],"split_type":[0,0,0],"sum_hessian":[2.0,1.0,1.0],"tree_param":{"num_deleted":"0","num_feature":"2","num_nodes":"3","size_leaf_vector":"0"}}' \
      "$3" "$4" "$5" "$2" "$3" "$4" "$1"
  }
  printf '{"learner":{"attributes":{},"feature_names":[],"feature_types":[],"gradient_booster":{"name":"gbtree","model":{"gbtree_model_param":{"num_parallel_tree":"1","num_trees":"2","size_leaf_vector":"0"},"tree_info":[0,0],"trees":[%s,%s]}},"learner_model_param":{"base_score":"5E-1","boost_from_average":"1","num_class":"0","num_feature":"2","num_target":"1"},"objective":{"name":"binary:logistic","reg_loss_param":{"scale_pos_weight":"1"}}},"version":[1,7,4]}' \
    "$(stump 0 0.5 -2.0 2.0 0)" "$(stump 1 0.3 -1.0 1.0 1)" >fraud/fraud.json
  jq -n --arg c "$created" --arg e "$expires" '{name: "fraud", version: "1.0", sequence: 1, created: $c,
    expires: $e, compatibility: {backend: "xgboost"}, runtime: {threads: 1, limits: {max_queue: 64}}}' >tf.json
  "$FL" bundle create --template tf.json --key keys/rel.pem -o fraud.tar fraud/fraud.json >/dev/null
  cp fraud.tar state/spool/.fraud.part && mv state/spool/.fraud.part state/spool/fraud.tar
  fraud_served() { [ "$(api "$URL/v1/status" | jq -r '.models.fraud.version // empty')" = 1.0 ]; }
  wait_for 60 fraud_served || die "fraud (xgboost) not served: $(tail -n 5 agent.log)"
  prow='{"model":"fraud","rows":[[0.9,0.1]]}'
  [ "$(api -d "$prow" "$URL/v1/predict" | jq -c .classes)" = "[1]" ] || die "predict gives a wrong answer"
  python3 hammer.py "$port" /v1/predict "$prow" "$CONNS" 200 5 bench-token >/dev/null # warm up
  read -r hz_n hz_err hz_s hz_rps hz_p50 hz_p99 < <(python3 hammer.py "$port" /healthz - "$CONNS" "$PN" "$PS" bench-token)
  read -r pr_n pr_err pr_s pr_rps pr_p50 pr_p99 < <(python3 hammer.py "$port" /v1/predict "$prow" "$CONNS" "$PN" "$PS" bench-token)
  tab=1
fi

ms() { awk -v s="$1" 'BEGIN { printf "%.1f ms", s * 1000 }'; }
echo "model: llama dim 512, 8 layers, q8_0 ($(stat -c %s v1/model.gguf) bytes), $THR threads, context 1024"
echo "agent RSS with no model loaded (empty state, API on, idle): $(awk -v k="$rss0" 'BEGIN { printf "%.1f MiB", k / 1024 }') (target < 10 MiB: $([ "$rss0" -lt 10240 ] && echo met || echo NOT met)); after its first request: $(awk -v k="$rss1" 'BEGIN { printf "%.1f MiB", k / 1024 }')"
if [ -n "$rss_mq" ]; then
  echo "agent RSS with [mqtt] connected over TLS (same, idle): $(awk -v k="$rss_mq" 'BEGIN { printf "%.1f MiB", k / 1024 }') (no target; docs/serving.md \"Memory\")"
else
  echo "agent RSS with [mqtt]: skipped (mosquitto not installed)"
fi
echo "engine direct (in process, warm, $eng_n tokens, $REQS runs): median $eng_tps tok/s, best $eng_best tok/s"
echo "agent HTTP /v1/completions (warm runner, end to end, $http_n tokens, $REQS runs): median $http_tps tok/s, best $http_best tok/s"
awk -v p="$pair_ratio" -v h="$http_tps" -v e="$eng_tps" -v hb="$http_best" -v eb="$eng_best" 'BEGIN {
  printf "ratio HTTP / engine tokens/s: %.3fx (median of the %s interleaved pairs; medians %.3fx, bests %.3fx) (target >= 0.95x: %s)\n",
    p, "'"$REQS"'", h / e, hb / eb, (p >= 0.95 ? "met" : "NOT met") }'
read -r cr ce ch <<<"$cpu_ratio"
echo "tokens per CPU second: engine $ce, agent + runner $ch: ratio ${cr}x (the cost of HTTP + runner IPC, insensitive to other load; >= 0.95x: $(awk -v x="$cr" 'BEGIN { print (x >= 0.95 ? "met" : "NOT met") }'))"
echo "1-token request latency over $N1: p50 $(ms "$p50"), p99 $(ms "$p99") (curl, a new process and connection each); the engine's own 1-token request: p50 $(ms "$e50"), p99 $(ms "$e99"); per-request cost of HTTP + runner IPC + curl at p50: $(ms "$(awk -v a="$p50" -v b="$e50" 'BEGIN { print a - b }')")"
echo "swap v1 -> v2 under a 1-token request loop: spool to serving $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f s", b - a }')," \
  "$((during - before)) requests during it, longest $(ms "$swapmax") vs loop median $(ms "$med")" \
  "(blip $(awk -v m="$swapmax" -v d="$med" 'BEGIN { printf "%.1f ms, %.1fx", (m - d) * 1000, m / d }')), $failed of $(wc -l <swap.txt) requests failed"
if [ -n "$tab" ]; then
  echo "tabular (xgboost, 2 features, 1 row per request), $CONNS connections, python3 client:"
  printf '  %-22s %9s %8s %10s %10s %7s\n' endpoint requests req/s p50 p99 errors
  printf '  %-22s %9s %8s %10s %10s %7s\n' "GET /healthz (ref)" "$hz_n" "$hz_rps" "$(ms "$hz_p50")" "$(ms "$hz_p99")" "$hz_err"
  printf '  %-22s %9s %8s %10s %10s %7s\n' "POST /v1/predict" "$pr_n" "$pr_rps" "$(ms "$pr_p50")" "$(ms "$pr_p99")" "$pr_err"
  awk -v p="$pr_rps" -v h="$hz_rps" 'BEGIN { printf "  ratio predict / healthz requests/s: %.3fx (no target: the backend cost over HTTP alone)\n", p / h }'
else
  echo "tabular (xgboost) /v1/predict: skipped (libxgboost0 or python3 not installed)"
fi
