#!/usr/bin/env bash
# libarchive is loaded on demand (ota/src/archive_dl.c, docs/serving.md
# "Memory"): an idle agent does not map it; the first bundle it reads (a
# spool install) loads it and the install works.
#
#   agent_lazy_archive.sh FLOTILLA AGENT MKMODEL
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3
. "$(dirname "$0")/lib.sh"
for t in jq curl; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
mk_tmp agent_lazy_archive
svc=
cleanup() { [ -n "$svc" ] && kill "$svc" 2>/dev/null; wait 2>/dev/null; [ -n "${FL_KEEP_TMP:-}" ] || rm -rf "$tmp"; }
trap cleanup EXIT

mk_trust "$tmp" tiny
T=$tmp/trust S=$tmp/state
mk_model "$tmp/v1/model.gguf" 1
mk_bundle "$tmp/v1.tar" "$tmp/keys" tiny 1.0 1 "$tmp/v1/model.gguf"

if command -v readelf >/dev/null; then
  check "the agent binary does not link libarchive" \
    bash -c "! readelf -d '$AGENT' | grep -q 'NEEDED.*libarchive'"
fi
mkdir -p "$S/spool"
for _ in 1 2 3 4 5; do # a random port may be taken: the agent says so and exits
  port=$(free_port)
  printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nlisten = 127.0.0.1:%s\ntoken = s3cret\n' \
    "$S" "$T" "$port" >"$tmp/agent.conf"
  FLOTILLA_LOG_LEVEL=info "$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent.log" &
  svc=$!
  for _ in $(seq 100); do grep -qs "local API on" "$tmp/agent.log" && break; kill -0 $svc 2>/dev/null || break; sleep 0.1; done
  grep -qs "local API on" "$tmp/agent.log" && break
  wait $svc 2>/dev/null; svc=
done
check "the agent is up" grep -qs "local API on" "$tmp/agent.log"
mapped() { grep -q 'libarchive\.so' "/proc/$svc/maps"; }
sleep 0.5
check "an idle agent (trust store read) does not map libarchive" bash -c "! grep -q 'libarchive\.so' /proc/$svc/maps"

served() { [ "$(curl -s -m 5 -H 'Authorization: Bearer s3cret' "http://127.0.0.1:$port/v1/status" | jq -r '.models.tiny.version // empty')" = 1.0 ]; }
cp "$tmp/v1.tar" "$S/spool/.v1.part" && mv "$S/spool/.v1.part" "$S/spool/v1.tar"
check "a spooled bundle installs and is served" wait_for 60 served
check "reading it loaded libarchive" mapped
check "no load error logged" bash -c "! grep -q 'cannot load' '$tmp/agent.log'"
finish
