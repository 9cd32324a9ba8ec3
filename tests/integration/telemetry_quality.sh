#!/usr/bin/env bash
# Quality baselines and drift (docs/telemetry.md "Quality and drift"): the
# acceptance tests' outputs are stored as the version's baseline in the
# agent's state (tele_baseline in STATE_DIR/state.db, survives a restart);
# model records of that version then carry "drift" against it at the
# controller. A text model whose acceptance outputs are not empty, served
# requests that all come back empty (a stop string matching the first
# character): empty_rate_delta = 1. A classifier (xgboost, when libxgboost is
# installed) whose acceptance rows are half of each class, served rows all
# of class 0: the class mix and confidence histogram are in the model record
# and class_psi shows the shift.
#
# usage: telemetry_quality.sh FLOTILLA FLOTILLA-CONTROLLER FLOTILLA-AGENT MKMODEL
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/telemetry_lib.sh" "$1" "$2" "$3"
FLOTILLA=$1 MKMODEL=$4
for t in jq curl; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
fleet_init tele-quality
fleet_pki dev1
fleet_broker_start
fleet_trust m fraud
fleet_controller_start
DB=$FLEET_DIR/controller-data/controller.db

created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
mk_model "$FLEET_DIR/v1/model.gguf" 1
jq -n --arg c "$created" --arg e "$expires" '{name: "m", version: "1.0", sequence: 1,
  created: $c, expires: $e, compatibility: {backend: "gguf"},
  acceptance: [{name: "a", prompt: "Hello", max_tokens: 8}, {name: "b", prompt: "The sky is", max_tokens: 8},
               {name: "c", prompt: "Once upon a time", max_tokens: 8}]}' >"$FLEET_DIR/t1.json"
"$FLOTILLA" bundle create --template "$FLEET_DIR/t1.json" --key "$FLEET_DIR/keys/release.pem" \
  -o "$FLEET_DIR/v1.tar" "$FLEET_DIR/v1/model.gguf" >/dev/null
check "text bundle built" test -s "$FLEET_DIR/v1.tar"

api_up() { curl -s -m 2 -o /dev/null "http://127.0.0.1:$port/healthz"; }
start_agent() {
  for try in 1 2 3 4 5; do # a random port may be taken: the agent exits, try another
    port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    tele_agent_start dev1 "" "listen = 127.0.0.1:$port
socket = off"
    fleet_wait 10 api_up && break
    kill -0 "${FLEET_AGENT_PID[dev1]}" 2>/dev/null && break
    wait "${FLEET_AGENT_PID[dev1]}" 2>/dev/null
  done
}
start_agent
check "agent dev1 online" fleet_wait_online 30 dev1
D=$FLEET_DIR/dev1
spool() { cp "$1" "$D/state/spool/.$2.part" && touch -d '-1 min' "$D/state/spool/.$2.part" && mv "$D/state/spool/.$2.part" "$D/state/spool/$2"; }
spool "$FLEET_DIR/v1.tar" v1.tar
api() { curl -s -m 30 "$@"; }
served() { [ "$(api "http://127.0.0.1:$port/v1/status" | jq -r ".models.$1.version // empty")" = "$2" ]; }
check "v1 is served" fleet_wait 60 served m 1.0

base() { qa dev1 "SELECT body FROM tele_baseline WHERE model='$1' AND version='$2'"; }
b=$(base m 1.0)
echo "baseline m 1.0: $b"
check "acceptance stored a baseline: 3 outputs" jq -e '.outputs == 3 and .out_len.n == 3' <<<"$b" >/dev/null
check "baseline outputs are not empty" jq -e '.empty == 0' <<<"$b" >/dev/null

# Served requests whose output is empty: the stop string is the greedy
# answer's first character.
first=$(api -d '{"model":"m","prompt":"Hello","max_tokens":8,"temperature":0}' \
  "http://127.0.0.1:$port/v1/completions" | jq -r '.choices[0].text')
echo "greedy answer: '$first'"
stop=${first:0:1}
check "the model answers something" test -n "$stop"
req=$(jq -nc --arg s "$stop" '{model: "m", prompt: "Hello", max_tokens: 8, temperature: 0, stop: $s}')
out=$(api -d "$req" "http://127.0.0.1:$port/v1/completions")
check "a stopped request answers empty" test "$(jq -r '.choices[0].text' <<<"$out")" = ""

drift() { q "SELECT json_extract(body,'\$.drift.$3') FROM telemetry WHERE device='dev1' AND kind='model'
             AND json_extract(body,'\$.model')='$1' AND json_extract(body,'\$.version')='$2'
             AND json_extract(body,'\$.drift') IS NOT NULL AND json_extract(body,'\$.drift.$3') >= ${4:-0}
             ORDER BY seq DESC LIMIT 1"; }
empty_drift() { [ -n "$(drift m 1.0 empty_rate_delta 0.5)" ]; }
# A rate needs 20 outputs in one period (1 s here): bursts of 25 requests,
# 8 at a time, until a period held 20 (at most 6 bursts).
burst() { seq 1 25 | xargs -P 8 -I{} curl -s -m 30 -o /dev/null -d "$req" "http://127.0.0.1:$port/v1/completions"; }
until_drift() {
  local i
  for i in 1 2 3 4 5 6; do burst; fleet_wait 5 empty_drift && return 0; done
  return 1
}
check "model record at the controller: drift.empty_rate_delta against the baseline" until_drift
echo "empty_rate_delta: $(drift m 1.0 empty_rate_delta)"
check "len_psi present (-1: the 3-output baseline is too small for a PSI)" \
  test -n "$(drift m 1.0 len_psi -1)"

# The baseline survives a restart of the agent.
kill -TERM "${FLEET_AGENT_PID[dev1]}"; wait "${FLEET_AGENT_PID[dev1]}" 2>/dev/null
check "baseline still stored after the agent stopped" test "$(base m 1.0 | jq -r .outputs)" = 3
q "DELETE FROM telemetry WHERE device='dev1' AND kind='model'"
start_agent
check "agent dev1 online again" fleet_wait_online 30 dev1
check "v1 served after the restart" fleet_wait 60 served m 1.0
check "drift after the restart too" until_drift

# ---- a classifier
if ! ls /usr/lib/*/libxgboost.so.0 >/dev/null 2>&1; then
  echo "SKIPPED (classifier part): libxgboost0 is not installed (packaging/deps.sh installs libxgboost-dev)"
  finish
  exit $?
fi
# binary:logistic on 2 features, margin = +-2 by f0 < 0.5 (missing: left)
mkdir -p "$FLEET_DIR/x1"
cat >"$FLEET_DIR/x1/fraud.json" <<'EOM'
{"learner":{"attributes":{},"feature_names":[],"feature_types":[],
 "gradient_booster":{"name":"gbtree","model":{"gbtree_model_param":{"num_parallel_tree":"1",
  "num_trees":"1","size_leaf_vector":"0"},"tree_info":[0],
  "trees":[{"base_weights":[0.0,-2.0,2.0],"categories":[],"categories_nodes":[],"categories_segments":[],
 "categories_sizes":[],"default_left":[1,0,0],"id":0,"left_children":[1,-1,-1],
 "loss_changes":[1.0,0.0,0.0],"parents":[2147483647,0,0],"right_children":[2,-1,-1],
 "split_conditions":[0.5,-2.0,2.0],"split_indices":[0,0,0],"split_type":[0,0,0],
 "sum_hessian":[2.0,1.0,1.0],"tree_param":{"num_deleted":"0","num_feature":"2","num_nodes":"3",
 "size_leaf_vector":"0"}}]}},
 "learner_model_param":{"base_score":"5E-1","boost_from_average":"1","num_class":"0",
  "num_feature":"2","num_target":"1"},
 "objective":{"name":"binary:logistic","reg_loss_param":{"scale_pos_weight":"1"}}},
 "version":[1,7,4]}
EOM
# acceptance: 24 rows, half of each class
rows=$(jq -nc '[range(24) | [(if . % 2 == 0 then 0.9 else 0.1 end), 0.5]]')
jq -n --arg c "$created" --arg e "$expires" --arg p "$rows" '{name: "fraud", version: "1.0",
  sequence: 1, created: $c, expires: $e, compatibility: {backend: "xgboost"}, runtime: {threads: 1},
  acceptance: [{name: "rows", prompt: $p, max_tokens: 1, latency_budget_ms: 5000}]}' >"$FLEET_DIR/tx.json"
"$FLOTILLA" bundle create --template "$FLEET_DIR/tx.json" --key "$FLEET_DIR/keys/release.pem" \
  -o "$FLEET_DIR/x1.tar" "$FLEET_DIR/x1/fraud.json" >/dev/null
check "xgboost bundle built" test -s "$FLEET_DIR/x1.tar"
spool "$FLEET_DIR/x1.tar" x1.tar
check "classifier is served" fleet_wait 60 served fraud 1.0
b=$(base fraud 1.0)
echo "baseline fraud 1.0: $b"
check "classifier baseline: 24 predictions, 12 of each class" \
  jq -e '.predictions == 24 and .classes == [12,12]' <<<"$b" >/dev/null
check "classifier baseline: confidence histogram (sigmoid(2) = 0.88: bucket 17)" \
  jq -e '.conf[17] == 24' <<<"$b" >/dev/null
prow=$(jq -nc '{model: "fraud", rows: [range(25) | [0.1, 0.5]]}')
out=$(api -d "$prow" "http://127.0.0.1:$port/v1/predict")
check "served rows are all class 0" jq -e '.classes | length == 25 and all(. == 0)' <<<"$out" >/dev/null
class_drift() { [ -n "$(drift fraud 1.0 class_psi 0.25)" ]; }
check "model record: drift.class_psi shows the shift" fleet_wait 20 class_drift
echo "class_psi: $(drift fraud 1.0 class_psi)"
rec=$(q "SELECT body FROM telemetry WHERE device='dev1' AND kind='model'
         AND json_extract(body,'\$.model')='fraud' AND json_extract(body,'\$.drift') IS NOT NULL
         ORDER BY seq DESC LIMIT 1")
echo "$rec" | head -c 600; echo
check "model record: class mix and confidence histogram" \
  jq -e '.quality.predictions == 25 and .quality.classes == [25] and .quality.conf[17] == 25' <<<"$rec" >/dev/null
check "model record: conf_psi of the same confidences is ~0" jq -e '.drift.conf_psi >= 0 and .drift.conf_psi < 0.01' <<<"$rec" >/dev/null
finish
