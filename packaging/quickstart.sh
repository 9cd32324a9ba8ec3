#!/usr/bin/env bash
# Flotilla quickstart: install what is missing, build, run the demo.
#
#   bash packaging/quickstart.sh [--keep]
#
# The demo, step by step: an offline root key and a release key, a keyring in
# which the root delegates the release key, a tiny GGUF model signed into a
# bundle, two devices (each its own state directory and trust store) that
# install it, a fine-tune that moves only its changed chunks, a broken
# version and a tampered bundle that devices refuse while the old model keeps
# serving, and a revert. --keep keeps the demo directory for a look around.
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0
for a in "$@"; do
  case $a in
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "quickstart: unknown option $a" >&2; exit 2 ;;
  esac
done

bash packaging/deps.sh
echo "== building (cmake preset dev)"
cmake --preset dev >/dev/null
cmake --build --preset dev -j "$(nproc)" | tail -1
B=$PWD/build/dev
FL=$B/controller/cli/flotilla
AGENT=$B/agent/flotilla-agent
MKMODEL=$B/runtime/tools/mkmodel
FINETUNE=$B/runtime/tools/finetune

# Only warnings and errors from the programs: the demo narrates the rest.
export FLOTILLA_LOG_LEVEL=warn
D=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-demo.XXXXXX")
cleanup() { if [ "$KEEP" = 1 ]; then echo "demo files kept in $D"; else rm -rf "$D"; fi; }
trap cleanup EXIT
trap 'echo; echo "interrupted"; exit 130' INT TERM
cd "$D"
mkdir -p keys v1 v2 v3
if [ -t 1 ]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi
run() { printf '$ %s\n' "$*" | sed "s#$B/[a-z/]*/##g"; "$@"; }

step "1. Keys: an offline root key and a release key (ECDSA P-256)"
run "$FL" key generate keys/root.pem
run "$FL" key generate keys/release.pem

step "2. Keyring: the root delegates the release key for model 'tiny-chat' (90 days)"
run "$FL" keyring create --version 1 --expires-days 90 --threshold 1 \
  --key keys/release.pub.pem:tiny-chat -o keys/keyring.json
run "$FL" keyring sign keys/keyring.json --key keys/root.pem -o keys/keyring.dsse.json
run "$FL" keyring verify keys/keyring.dsse.json --root keys/root.pub.pem --threshold 1

step "3. Model v1: a tiny llama-architecture GGUF (8 layers, Q8_0) made here"
run "$MKMODEL" --arch llama --vocab tiny --dim 256 --layers 8 --heads 8 --kv-heads 4 \
  --ffn 768 --type q8_0 --seed 1 -o v1/model.gguf
ls -l v1/model.gguf

step "4. Bundle v1: content-defined chunks + DSSE-signed manifest"
run "$FL" bundle create --name tiny-chat --version 1.0.0 --sequence 1 --key keys/release.pem \
  -o tiny-chat-1.0.0.tar v1/model.gguf
run "$FL" bundle inspect tiny-chat-1.0.0.tar

step "5. Two devices: each trusts the root key and holds the keyring"
for dev in dev-1 dev-2; do
  mkdir -p "$dev/trust"
  cp keys/root.pub.pem "$dev/trust/root.pem"
  cp keys/keyring.dsse.json "$dev/trust/keyring.dsse.json"
  run "$AGENT" --state-dir "$dev/state" --trust-dir "$dev/trust" install tiny-chat-1.0.0.tar
done
run "$AGENT" --state-dir dev-1/state --trust-dir dev-1/trust status

step "6. Fine-tune v2: layer 3 retrained; only its chunks move"
run "$FINETUNE" v1/model.gguf v2/model.gguf --layers 3 --seed 11
run "$FL" bundle create --name tiny-chat --version 1.1.0 --sequence 2 --key keys/release.pem \
  -o tiny-chat-1.1.0.tar v2/model.gguf
run "$FL" bundle diff tiny-chat-1.0.0.tar tiny-chat-1.1.0.tar
for dev in dev-1 dev-2; do
  run "$AGENT" --state-dir "$dev/state" --trust-dir "$dev/trust" install tiny-chat-1.1.0.tar
done

step "7. A broken v3 (its weights do not load): refused, v2 keeps serving"
mkdir -p v3
head -c 2000000 v2/model.gguf >v3/model.gguf
run "$FL" bundle create --name tiny-chat --version 1.2.0 --sequence 3 --key keys/release.pem \
  -o tiny-chat-1.2.0.tar v3/model.gguf
run "$AGENT" --state-dir dev-1/state --trust-dir dev-1/trust install tiny-chat-1.2.0.tar || true
run "$AGENT" --state-dir dev-1/state --trust-dir dev-1/trust status

step "8. Attacks: a tampered bundle and a replayed old version are refused"
cp tiny-chat-1.1.0.tar tampered.tar
printf 'X' | dd of=tampered.tar bs=1 seek=$(( $(stat -c %s tampered.tar) - 50000 )) conv=notrunc status=none
run "$AGENT" --state-dir dev-2/state --trust-dir dev-2/trust install tampered.tar || true
run "$AGENT" --state-dir dev-2/state --trust-dir dev-2/trust install tiny-chat-1.0.0.tar || true

step "9. Revert: dev-2 goes back to the version it ran before"
run "$AGENT" --state-dir dev-2/state --trust-dir dev-2/trust revert tiny-chat
run "$AGENT" --state-dir dev-2/state --trust-dir dev-2/trust status

step "10. dev-1 serves its model: the agent service and its OpenAI-compatible API"
port=$((20000 + RANDOM % 20000))
cat >dev-1/agent.conf <<EOC
[agent]
state_dir = $D/dev-1/state
trust_dir = $D/dev-1/trust
[serve]
listen = 127.0.0.1:$port
EOC
"$AGENT" --config dev-1/agent.conf run &
svc=$!
trap '{ kill $svc; wait $svc; } 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 1 100); do
  curl -s -m 2 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
run curl -s -m 20 "http://127.0.0.1:$port/v1/models"
echo
run curl -s -m 20 -H 'Content-Type: application/json' \
  -d '{"prompt": "The factory line reported", "max_tokens": 12}' "http://127.0.0.1:$port/v1/completions"
echo
echo "(a random tiny model: the words are noise, the plumbing is real)"
kill -TERM $svc; wait $svc || true
trap cleanup EXIT

step "Done"
cat <<EOT
Two devices installed signed bundles, moved only the changed chunks of a
fine-tune, refused a broken version, a tampered bundle and a replay, one
reverted, and one served its model over the local API. Next in the demo:
a local fleet (mosquitto with TLS and ACLs, the controller and its
dashboard, agents) doing staged rollouts.
EOT
