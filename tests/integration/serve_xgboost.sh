#!/usr/bin/env bash
# A tabular model end to end: a signed bundle with backend "xgboost" (an
# XGBoost JSON model written here by hand: two stumps, so every prediction
# is known exactly) is installed into a running agent through the spool,
# passes its acceptance tests (expected classes and values) in a runner, and
# answers POST /v1/predict on the local API; schema errors are 4xx; a
# version whose acceptance test expects other classes is rejected and the
# old one keeps serving; a good v3 swaps in.
#
#   serve_xgboost.sh FLOTILLA AGENT
set -uo pipefail
FLOTILLA=$1 AGENT=$2
. "$(dirname "$0")/lib.sh"
for t in jq curl; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
if ! ls /usr/lib/*/libxgboost.so.0 >/dev/null 2>&1; then
  echo "SKIPPED: libxgboost0 is not installed (packaging/deps.sh installs libxgboost-dev)"
  exit 0
fi
mk_tmp serve_xgboost
svc=
cleanup() { [ -n "$svc" ] && kill "$svc" 2>/dev/null; wait 2>/dev/null; [ -n "${FL_KEEP_TMP:-}" ] || rm -rf "$tmp"; }
trap cleanup EXIT
mk_trust "$tmp" fraud
T=$tmp/trust S=$tmp/state

# stump FEATURE THRESHOLD LEFT RIGHT ID: one XGBoost tree of a root split
# (missing values go left) and two leaves.
stump() {
  set -- "$1" "$2" "$(printf %.1f "$3")" "$(printf %.1f "$4")" "$5" # XGBoost wants floats
  cat <<EOT
{"base_weights":[0.0,$3,$4],"categories":[],"categories_nodes":[],"categories_segments":[],
 "categories_sizes":[],"default_left":[1,0,0],"id":$5,"left_children":[1,-1,-1],
 "loss_changes":[1.0,0.0,0.0],"parents":[2147483647,0,0],"right_children":[2,-1,-1],
 "split_conditions":[$2,$3,$4],"split_indices":[$1,0,0],"split_type":[0,0,0],
 "sum_hessian":[2.0,1.0,1.0],"tree_param":{"num_deleted":"0","num_feature":"2","num_nodes":"3",
 "size_leaf_vector":"0"}}
EOT
}
# model OUT SIGN: binary:logistic on 2 features, margin = SIGN * (+-2 by
# f0 < 0.5, +-1 by f1 < 0.3).
model() {
  local s=$2
  cat >"$1" <<EOM
{"learner":{"attributes":{},"feature_names":[],"feature_types":[],
 "gradient_booster":{"name":"gbtree","model":{"gbtree_model_param":{"num_parallel_tree":"1",
  "num_trees":"2","size_leaf_vector":"0"},"tree_info":[0,0],
  "trees":[$(stump 0 0.5 $((-2 * s)) $((2 * s)) 0),$(stump 1 0.3 $((-1 * s)) $((1 * s)) 1)]}},
 "learner_model_param":{"base_score":"5E-1","boost_from_average":"1","num_class":"0",
  "num_feature":"2","num_target":"1"},
 "objective":{"name":"binary:logistic","reg_loss_param":{"scale_pos_weight":"1"}}},
 "version":[1,7,4]}
EOM
}
mkdir -p "$tmp/v1" "$tmp/v3"
model "$tmp/v1/fraud.json" 1
model "$tmp/v3/fraud.json" -1
created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
# bundle OUT VERSION SEQ DIR EXPECT
bundle() {
  jq -n --arg c "$created" --arg e "$expires" --arg v "$2" --argjson s "$3" --arg x "$5" '{name: "fraud",
    version: $v, sequence: $s, created: $c, expires: $e, compatibility: {backend: "xgboost"},
    runtime: {threads: 1},
    acceptance: [{name: "known-rows", prompt: "[[0.9,0.9],[0.1,0.1],[null,0.9]]", expect: $x, max_tokens: 1,
                  latency_budget_ms: 5000}]}' >"$tmp/t$3.json"
  "$FLOTILLA" bundle create --template "$tmp/t$3.json" --key "$tmp/keys/release.pem" -o "$1" "$4/fraud.json" >/dev/null
}
# sigmoid(3) = 0.952574, sigmoid(-3) = 0.047426, missing f0 goes left: sigmoid(-1) = 0.268941
bundle "$tmp/v1.tar" 1.0 1 "$tmp/v1" '{"classes":[1,0,0],"values":[0.952574,0.047426,0.268941],"tolerance":1e-5}'
bundle "$tmp/v2.tar" 2.0 2 "$tmp/v1" '{"classes":[0,1,0]}'
bundle "$tmp/v3.tar" 3.0 3 "$tmp/v3" '{"classes":[0,1,1],"values":[0.047426,0.952574,0.731059]}'
check "bundles built" test -s "$tmp/v1.tar" -a -s "$tmp/v2.tar" -a -s "$tmp/v3.tar"

port=$(free_port)
mkdir -p "$S/spool"
cat >"$tmp/agent.conf" <<EOC
[agent]
state_dir = $S
trust_dir = $T
[serve]
listen = 127.0.0.1:$port
EOC
"$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent.log" &
svc=$!
URL=http://127.0.0.1:$port
api() { curl -s -m 20 "$@"; }
# spool: the file dated back so the spool does not wait for it to settle
spool() { cp "$1" "$S/spool/.$2.part" && touch -d '-1 min' "$S/spool/.$2.part" && mv "$S/spool/.$2.part" "$S/spool/$2"; }
served() { [ "$(api "$URL/v1/status" | jq -r '.models.fraud.version // empty')" = "$1" ]; }
jqe() { jq -e "$@" >/dev/null; }

spool "$tmp/v1.tar" v1.tar
check "v1 (xgboost) installed and served" wait_for 30 served 1.0
check "its acceptance test ran in a runner and passed" grep -q "acceptance: test 1 known-rows passed" "$tmp/agent.log"
out=$(api -d '{"model":"fraud","rows":[[0.9,0.9],[0.9,0.1],[0.1,0.9],[0.1,0.1],[null,null]]}' "$URL/v1/predict")
echo "predict: $out"
check "objective and kind" [ "$(jq -r '.objective + " " + .kind' <<<"$out")" = "binary:logistic binary" ]
check "classes 1 1 0 0 0" [ "$(jq -c .classes <<<"$out")" = "[1,1,0,0,0]" ]
check "probabilities are the model's exactly" jqe '[.predictions, [0.952574, 0.731059, 0.268941, 0.047426, 0.047426]] | transpose | all(.[0] - .[1] | fabs < 1e-5)' <<<"$out"
code=$(api -o "$tmp/e.json" -w '%{http_code}' -d '{"rows":[[0.9,0.9,0.9]]}' "$URL/v1/predict")
check "wrong number of features: 400 naming it" bash -c "[ $code = 400 ] && jq -e '.error.message == \"rows have 3 values, the model takes 2 features\" and .error.param == \"rows\"' '$tmp/e.json' >/dev/null"
code=$(api -o "$tmp/e.json" -w '%{http_code}' -d '{"rows":[[0.9,"high"]]}' "$URL/v1/predict")
check "a string feature: 400 with its place" bash -c "[ $code = 400 ] && jq -e '.error.message | test(\"rows\\\\[0\\\\]\\\\[1\\\\]\")' '$tmp/e.json' >/dev/null"
code=$(api -o /dev/null -w '%{http_code}' -d '{"prompt":"hi"}' "$URL/v1/completions")
check "text completion on a tabular model: 400" [ "$code" = 400 ]
code=$(api -o /dev/null -w '%{http_code}' "$URL/v1/predict")
check "GET /v1/predict: 405" [ "$code" = 405 ]
out=$(curl -s -m 20 --unix-socket "$S/api.sock" -d '{"rows":[[0.9,0.1]]}' http://localhost/v1/predict)
check "predict over the UNIX socket" [ "$(jq -c .classes <<<"$out")" = "[1]" ]

spool "$tmp/v2.tar" v2.tar
check "v2 with a failing acceptance test is rejected" wait_for 30 bash -c "sqlite3 '$S/state.db' \"SELECT error FROM installs WHERE version='2.0' AND state=7\" | grep -q 'row 0: class 1, expected 0'"
check "v1 still serves" served 1.0
out=$(api -d '{"rows":[[0.9,0.9]]}' "$URL/v1/predict")
check "v1 still answers" [ "$(jq -c .classes <<<"$out")" = "[1]" ]

spool "$tmp/v3.tar" v3.tar
check "v3 swaps in" wait_for 30 served 3.0
out=$(api -d '{"rows":[[0.9,0.9],[0.1,0.1]]}' "$URL/v1/predict")
check "v3 answers with its own (inverted) model" [ "$(jq -c .classes <<<"$out")" = "[0,1]" ]
st=$(api "$URL/v1/status")
check "status counts the runner's requests, no failures" jqe '.models.fraud.failed == 0 and .models.fraud.crashes == 0' <<<"$st"
kill -TERM "$svc"; wait "$svc"; rc=$?; svc=
check "service stops cleanly" [ $rc -eq 0 ]
finish
