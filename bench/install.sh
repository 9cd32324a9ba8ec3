#!/usr/bin/env bash
# Install time of a ~220 MiB model and of a fine-tune of it (one layer of
# eight retrained, ~12% of the bytes) through `flotilla-agent install`
# (verify signature + every hash, extract to temp names, fsync, rename,
# load-test in the engine, switch), against `cp` + `sync` of the same bytes
# in the same run. Prints each figure and the ratio.
#
#   bench/install.sh [BUILD_DIR (build/dev)]
set -euo pipefail
B=${1:-build/dev}
FL=$B/controller/cli/flotilla AGENT=$B/agent/flotilla-agent
MKMODEL=$B/runtime/tools/mkmodel FINETUNE=$B/runtime/tools/finetune
for x in "$FL" "$AGENT" "$MKMODEL" "$FINETUNE"; do
  [ -x "$x" ] || { echo "install bench: $x not built" >&2; exit 1; }
done
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
echo "switch time (old model stops answering -> new answers): needs the serving runners (issue 6); not measured yet"
