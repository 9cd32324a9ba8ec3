#!/usr/bin/env bash
# Install time of a ~220 MiB model and of a fine-tune of it (one layer of
# eight retrained, ~12% of the bytes) through `flotilla-agent install`
# (verify signature + every hash, extract to temp names, fsync, rename,
# load-test in the engine, switch), against `cp` + `sync` of the same bytes
# in the same run. Prints each figure and the ratio; then the switch time with
# the service serving (see below).
#
#   bench/install.sh [BUILD_DIR (build/dev)]
set -euo pipefail
B=${1:-build/dev}
FL=$B/controller/cli/flotilla AGENT=$B/agent/flotilla-agent
MKMODEL=$B/runtime/tools/mkmodel FINETUNE=$B/runtime/tools/finetune
for x in "$FL" "$AGENT" "$MKMODEL" "$FINETUNE"; do
  [ -x "$x" ] || { echo "install bench: $x not built" >&2; exit 1; }
done
for t in jq curl; do command -v $t >/dev/null || { echo "install bench: $t not installed" >&2; exit 1; }; done
tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/flotilla-bench-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export FLOTILLA_LOG_LEVEL=warn

mkdir -p "$tmp/keys" "$tmp/trust" "$tmp/v1" "$tmp/v2"
"$FL" key generate "$tmp/keys/root.pem" >/dev/null
"$FL" key generate "$tmp/keys/rel.pem" >/dev/null
"$FL" keyring create --version 1 --expires-days 2 --threshold 1 --key "$tmp/keys/rel.pub.pem:bench" \
  -o "$tmp/keys/kr.json" >/dev/null
"$FL" keyring sign "$tmp/keys/kr.json" --key "$tmp/keys/root.pem" -o "$tmp/trust/keyring.dsse.json" >/dev/null
cp "$tmp/keys/root.pub.pem" "$tmp/trust/root.pem"
"$MKMODEL" --arch llama --vocab tiny --dim 1024 --layers 8 --heads 8 --kv-heads 8 --ffn 1024 \
  --ctx 512 --type f32 --seed 1 -o "$tmp/v1/model.gguf" >/dev/null
ft=$("$FINETUNE" "$tmp/v1/model.gguf" "$tmp/v2/model.gguf" --layers 3 --seed 5)
for v in 1 2; do
  "$FL" bundle create --name bench --version "$v" --sequence "$v" --key "$tmp/keys/rel.pem" \
    -o "$tmp/v$v.tar" "$tmp/v$v/model.gguf" >/dev/null
done
size=$(stat -c %s "$tmp/v1/model.gguf")

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
cp_sync() { # cp_sync SRC: copy to a fresh dir and sync, print seconds
  rm -rf "$tmp/cp"; mkdir "$tmp/cp"; sync
  local t0; t0=$(now); cp "$1" "$tmp/cp/"; sync; secs "$t0" "$(now)"
}
install() { # install BUNDLE: print seconds
  sync
  local t0; t0=$(now)
  "$AGENT" --state-dir "$tmp/state" --trust-dir "$tmp/trust" install "$1" >/dev/null
  secs "$t0" "$(now)"
}
# Warm the page cache for both sides alike.
cat "$tmp"/v?.tar "$tmp"/v?/model.gguf >/dev/null
c1=$(cp_sync "$tmp/v1/model.gguf"); i1=$(install "$tmp/v1.tar")
c2=$(cp_sync "$tmp/v2/model.gguf"); i2=$(install "$tmp/v2.tar")
delta=$("$FL" bundle diff "$tmp/v1.tar" "$tmp/v2.tar")
echo "model: $((size / 1048576)) MiB F32, fine-tune: $ft"
echo "bundle diff v1 -> v2: $delta"
awk -v c="$c1" -v i="$i1" 'BEGIN { printf "install v1: %.3f s, cp+sync %.3f s, ratio %.2fx\n", i, c, i / c }'
awk -v c="$c2" -v i="$i2" 'BEGIN { printf "install v2 (fine-tune, local bundle): %.3f s, cp+sync %.3f s, ratio %.2fx\n", i, c, i / c }'

# Switch time, with the service serving: `flotilla-agent run` with the local
# API, v1 then v2 dropped in the spool while a client loops 1-token
# requests. The agent logs, for the swap, the time from SWITCHING journaled
# to new requests going to v2's runner (already loaded and answering: the
# old model never stops answering before the new one does); the client side
# gives its longest request during the swap and any failure.
port=$((20000 + RANDOM % 20000))
mkdir -p "$tmp/state2/spool"
printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nlisten = 127.0.0.1:%s\n' \
  "$tmp/state2" "$tmp/trust" "$port" >"$tmp/agent.conf"
FLOTILLA_LOG_LEVEL=info "$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent.log" &
svc=$!
trap 'kill $svc 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
URL=http://127.0.0.1:$port
served() { [ "$(curl -s -m 5 "$URL/v1/status" | jq -r '.models.bench.version // empty')" = "$1" ]; }
wait_for() { local end=$((SECONDS + $1)); shift; while [ $SECONDS -lt $end ]; do "$@" && return 0; sleep 0.05; done; return 1; }
spool() { cp "$1" "$tmp/state2/spool/.$2.part" && touch -d '-1 min' "$tmp/state2/spool/.$2.part" &&
  mv "$tmp/state2/spool/.$2.part" "$tmp/state2/spool/$2"; }
spool "$tmp/v1.tar" v1.tar
wait_for 120 served 1 || { echo "install bench: v1 not served: $(tail -n 3 "$tmp/agent.log")" >&2; exit 1; }
( while [ ! -e "$tmp/stop" ]; do
    curl -s -m 60 -o /dev/null -w '%{http_code} %{time_total}\n' \
      -d '{"prompt":"Hello","max_tokens":1,"temperature":0}' "$URL/v1/completions" || echo "000 0"
  done >"$tmp/loop.txt" ) &
loop=$!
sleep 1
before=$(wc -l <"$tmp/loop.txt")
spool "$tmp/v2.tar" v2.tar
wait_for 120 served 2 || { echo "install bench: v2 not served: $(tail -n 3 "$tmp/agent.log")" >&2; exit 1; }
during=$(wc -l <"$tmp/loop.txt")
sleep 0.5
touch "$tmp/stop"; wait "$loop"
kill -TERM "$svc"; wait "$svc" 2>/dev/null
sw=$(grep -o 'install.switched bench 2: serving slot . [0-9.]* ms after SWITCHING (rename [0-9.]* ms)' "$tmp/agent.log" | tail -n 1)
failed=$(grep -vc '^200 ' "$tmp/loop.txt" || true)
longest=$(sed -n "$((before + 1)),$((during + 1))p" "$tmp/loop.txt" | awk '{ print $2 }' | sort -g | tail -n 1)
med=$(awk '{ print $2 }' "$tmp/loop.txt" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
echo "switch time (SWITCHING journaled -> new requests on v2's runner): ${sw#*: serving slot ? } (target well under 1 s)"
awk -v l="${longest:-0}" -v m="${med:-0}" -v n="$((during - before))" -v f="$failed" -v t="$(wc -l <"$tmp/loop.txt")" \
  'BEGIN { printf "client during the swap: %d requests, longest %.1f ms (loop median %.1f ms), %d of %d failed\n", n, l * 1000, m * 1000, f, t }'
