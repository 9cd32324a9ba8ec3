#!/usr/bin/env bash
# Twenty swaps under load (issues 5 and 6): a streaming and a non-streaming
# client keep asking while the model is swapped 20 times back and forth
# (A -> B -> A ... through spooled bundles of rising sequence). Zero failed
# or cut requests, every answer (streamed or whole) is exactly what A or B
# answers alone (never a mix), both answered, every install committed, and
# one runner is left at the end.
#
#   serve_swap20.sh FLOTILLA AGENT MKMODEL
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3
. "$(dirname "$0")/lib.sh"
for t in jq curl sqlite3; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
SWAPS=${SWAPS:-20}
mk_tmp serve_swap20
svc= l1= l2=
cleanup() {
  touch "$tmp/stop" 2>/dev/null
  for p in $l1 $l2 $svc; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null; [ -n "${FL_KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
mk_trust "$tmp" tiny
T=$tmp/trust S=$tmp/state
mk_model "$tmp/A/model.gguf" 1
mk_model "$tmp/B/model.gguf" 2
for seq in $(seq 1 $((SWAPS + 1))); do
  m=$([ $((seq % 2)) = 1 ] && echo A || echo B)
  mk_bundle "$tmp/v$seq.tar" "$tmp/keys" tiny "$seq.0" "$seq" "$tmp/$m/model.gguf"
done
check "$((SWAPS + 1)) bundles built" test -s "$tmp/v$((SWAPS + 1)).tar"

# What each model answers alone (greedy, 8 tokens), as a JSON string with
# U+FFFD removed: the API replaces invalid UTF-8 from these random models
# (per byte, same streamed or whole).
NORM='gsub("\ufffd"; "")'
greedy() {
  local w
  w=$("$AGENT" run-model "$1" --prompt "Hello" -n 8 2>/dev/null && echo x) || return 1
  w=${w%x}; w=${w%$'\n'}
  printf '%s' "$w" | jq -Rs -c "$NORM"
}
wantA=$(greedy "$tmp/A/model.gguf") wantB=$(greedy "$tmp/B/model.gguf")
check "A and B answer differently (the mix check means something)" \
  bash -c "[ -n '$wantA' ] && [ -n '$wantB' ] && [ '$wantA' != '$wantB' ]"

port=$(free_port)
mkdir -p "$S/spool"
printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nlisten = 127.0.0.1:%s\n' "$S" "$T" "$port" >"$tmp/agent.conf"
"$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent.log" &
svc=$!
URL=http://127.0.0.1:$port
api() { curl -s -m 30 "$@"; }
spool() { cp "$1" "$S/spool/.$2.part" && touch -d '-1 min' "$S/spool/.$2.part" && mv "$S/spool/.$2.part" "$S/spool/$2"; }
wait_for() { local end=$((SECONDS + $1)); shift; while [ $SECONDS -lt $end ]; do "$@" && return 0; sleep 0.1; done; return 1; }
served() { [ "$(api "$URL/v1/status" | jq -r '.models.tiny.version // empty')" = "$1" ]; }
spool "$tmp/v1.tar" v1.tar
check "v1 (A) served" wait_for 30 served 1.0

body='{"prompt":"Hello","max_tokens":8,"temperature":0}'
sbody='{"prompt":"Hello","max_tokens":8,"temperature":0,"stream":true}'
whole() { # one line per request: "CODE TEXT" (few processes: the machine may be busy)
  local r
  while [ ! -e "$tmp/stop" ]; do
    r=$(api -w '\n%{http_code}' -d "$body" "$URL/v1/completions")
    echo "${r##*$'\n'} $(jq -c ".choices[0].text | $NORM" 2>/dev/null <<<"${r%$'\n'*}")"
  done >"$tmp/whole.txt"
}
streamed() { # "CODE DONE-SEEN ERROR-SEEN TEXT": the deltas joined
  local r d e
  while [ ! -e "$tmp/stop" ]; do
    r=$(api -N -w '\n%{http_code}' -d "$sbody" "$URL/v1/completions")
    d=0 e=0
    [[ $r == *$'data: [DONE]\n'* ]] && d=1
    [[ $r == *'"error"'* ]] && e=1
    echo "${r##*$'\n'} $d$e $(sed -n 's/^data: {/{/p' <<<"$r" | jq -j '.choices[0].text' 2>/dev/null | jq -Rs -c "$NORM")"
  done >"$tmp/stream.txt"
}
whole & l1=$!
streamed & l2=$!
sleep 1
t0=$SECONDS swapped=0
for seq in $(seq 2 $((SWAPS + 1))); do
  spool "$tmp/v$seq.tar" "v$seq.tar"
  wait_for 60 served "$seq.0" || { bad "swap to v$seq timed out: $(tail -n 3 "$tmp/agent.log")"; break; }
  swapped=$((swapped + 1))
done
sleep 1
touch "$tmp/stop"
wait $l1 $l2; l1= l2=
echo "$swapped swaps in $((SECONDS - t0)) s"
check "$SWAPS consecutive swaps done" [ "$swapped" -eq "$SWAPS" ]

nw=$(wc -l <"$tmp/whole.txt") ns=$(wc -l <"$tmp/stream.txt")
wbad=$(grep -vc '^200 ' "$tmp/whole.txt")
wa=$(grep -cxF "200 $wantA" "$tmp/whole.txt") wb=$(grep -cxF "200 $wantB" "$tmp/whole.txt")
sbad=$(grep -vc '^200 10 ' "$tmp/stream.txt")
sa=$(grep -cxF "200 10 $wantA" "$tmp/stream.txt") sb=$(grep -cxF "200 10 $wantB" "$tmp/stream.txt")
echo "whole: $nw requests, $wa from A, $wb from B, $wbad failed; streamed: $ns, $sa from A, $sb from B, $sbad failed or cut"
check "no whole request failed" [ "$wbad" -eq 0 ]
check "no stream failed or was cut ([DONE] seen, no error event)" [ "$sbad" -eq 0 ]
check "every whole answer came from A or B, never a mix" [ $((wa + wb)) -eq "$nw" ]
check "every streamed answer came from A or B, never a mix" [ $((sa + sb)) -eq "$ns" ]
check "both models answered, streamed and whole" bash -c "[ $wa -gt 0 ] && [ $wb -gt 0 ] && [ $sa -gt 0 ] && [ $sb -gt 0 ]"
check "steady load: on average a request of each kind per swap or more" bash -c "[ $nw -ge $SWAPS ] && [ $ns -ge $SWAPS ]"
check "every install committed" [ "$(sqlite3 "$S/state.db" "SELECT count(*) FROM installs WHERE state=6")" = $((SWAPS + 1)) ]
check "one runner left (old ones stopped)" [ "$(pgrep -P "$svc" | wc -l)" = 1 ]
kill -TERM "$svc"; wait "$svc"; rc=$?; svc=
check "service stops cleanly" [ $rc -eq 0 ]
finish
