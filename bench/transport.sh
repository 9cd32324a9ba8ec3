#!/usr/bin/env bash
# Transport figures (Flotilla issue 7), all on 127.0.0.1 through a real
# mosquitto (mutual TLS + the Flotilla ACL, packaging/mosquitto):
#  1. reference: the bundle's bytes published by the controller's identity to
#     the device's chunk/dat (QoS 1, TLS) with mosquitto_pub, in 16 MiB
#     messages (one mosquitto_pub each; MQTT caps a message at 256 MiB),
#     received by mosquitto_sub as the device; seconds from the first publish
#     to the last byte received.
#  2. a loadable F32 llama GGUF (mkmodel) of about BENCH_MIB MiB (default 256;
#     the size used is printed) as a bundle, pushed to the real
#     controller and deployed to one real `flotilla-agent run`: seconds from
#     the deploy command until the controller reports the version committed
#     (chunk/req -> chunk/dat transfer, every chunk verified, install:
#     signature, hashes, fsync, switch), and until the controller's last
#     chunk/dat (the fetch alone; polled every 50 ms, plus the ~0.1 s the
#     deploy command takes). Ratio = reference time / fetch time (issue target
#     >= 0.7x); end to end also printed.
#  3. a ~10% fine-tune (runtime/tools/finetune: one layer of ~ten) deployed to
#     the same agent: bytes the controller sent (flotilla_chunk_bytes_sent)
#     vs the bundle size (target <= 15%).
#  4. the agent's idle RSS and CPU over BENCH_IDLE_S (10) seconds after that
#     (/proc/PID/status, /proc/PID/stat; the agent process itself).
#
#   bench/transport.sh [BUILD_DIR (build/dev)]
#   BENCH_MIB (256), BENCH_IDLE_S (10), BENCH_LIMIT_S (whole run, 1500),
#   BENCH_KEEP=1 keeps the work directory (logs) and prints its name
set -euo pipefail
B=$(cd "${1:-build/dev}" && pwd) || { echo "transport bench: no build directory ${1:-build/dev}" >&2; exit 1; }
MIB=${BENCH_MIB:-256}
case $MIB in ''|*[!0-9]*) echo "transport bench: BENCH_MIB must be a number" >&2; exit 2 ;; esac
[ "$MIB" -ge 1 ] && [ "$MIB" -le 4096 ] || { echo "transport bench: BENCH_MIB out of range (1..4096)" >&2; exit 2; }
FL=$B/controller/cli/flotilla CTL=$B/controller/flotilla-controller AGENT=$B/agent/flotilla-agent
MKMODEL=$B/runtime/tools/mkmodel FINETUNE=$B/runtime/tools/finetune
here=$(cd "$(dirname "$0")" && pwd)
pkg=$here/../packaging/mosquitto
for x in "$FL" "$CTL" "$AGENT" "$MKMODEL" "$FINETUNE"; do
  [ -x "$x" ] || { echo "transport bench: $x not built" >&2; exit 1; }
done
for t in mosquitto_pub mosquitto_sub jq curl timeout; do
  command -v $t >/dev/null || { echo "transport bench: $t not installed (mosquitto mosquitto-clients jq curl)" >&2; exit 1; }
done

# The broker drops to user mosquitto when run as root: it must reach its files.
tmp=$(mktemp -d /tmp/flotilla-bench-transport.XXXXXX)
chmod 0755 "$tmp"
P=$tmp/pki
broker_up= cpid= apid= subpid= dog=
cleanup() {
  local p
  for p in $subpid $apid $cpid $dog; do kill "$p" 2>/dev/null || true; done
  [ -n "$broker_up" ] && { "$pkg/stop-broker.sh" "$P" >/dev/null 2>&1 || echo "WARN: stop-broker failed" >&2; }
  wait 2>/dev/null || true
  if [ -n "${BENCH_KEEP:-}" ]; then echo "transport bench: files kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'echo "transport bench: interrupted (signal or BENCH_LIMIT_S)" >&2; exit 1' INT TERM
main=$$
( trap 'kill "$s" 2>/dev/null; exit 0' TERM; sleep "${BENCH_LIMIT_S:-1500}" & s=$!; wait "$s" && kill -TERM "$main" ) \
  >/dev/null 2>&1 &
dog=$!
export FLOTILLA_LOG_LEVEL=warn
cd "$tmp"
die() { echo "transport bench: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# ------------------------------------------------------------ payloads, keys
mkdir -p keys trust v1 v2
"$FL" key generate keys/root.pem >/dev/null
"$FL" key generate keys/rel.pem >/dev/null
"$FL" keyring create --version 1 --expires-days 2 --threshold 1 --key "keys/rel.pub.pem:bench" \
  -o keys/kr.json >/dev/null
"$FL" keyring sign keys/kr.json --key keys/root.pem -o trust/keyring.dsse.json >/dev/null
cp keys/root.pub.pem trust/root.pem
# F32 llama: about 28 MiB a layer at dim 1024 (7 MiB at dim 512 for small
# runs); the fine-tune retrains one layer of about ten (~10% of the bytes).
dim=1024 per=28
[ "$MIB" -lt 56 ] && dim=512 per=7
layers=$(( (MIB + per / 2) / per )); [ "$layers" -ge 1 ] || layers=1
"$MKMODEL" --arch llama --vocab tiny --dim "$dim" --layers "$layers" --heads 8 --kv-heads 8 --ffn "$dim" \
  --ctx 512 --type f32 --seed 1 -o v1/model.gguf >/dev/null
ft=$("$FINETUNE" v1/model.gguf v2/model.gguf --layers $((layers / 2)) --seed 5)
for v in 1 2; do
  "$FL" bundle create --name bench --version "$v.0" --sequence "$v" --key keys/rel.pem \
    -o "v$v.tar" "v$v/model.gguf" >/dev/null
done
size1=$(stat -c %s v1.tar) size2=$(stat -c %s v2.tar)

# ------------------------------------------------------------ PKI, broker
"$FL" pki init --dir "$P" >/dev/null
"$FL" pki issue-server --dir "$P" --dns localhost --ip 127.0.0.1 >/dev/null
"$FL" pki issue-controller --dir "$P" >/dev/null
"$FL" pki issue-device dev1 --dir "$P" >/dev/null
for _ in $(seq 20); do
  PORT=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
  # 16 MiB reference messages: above the shipped 2 MiB message_size_limit.
  if FL_BROKER_MESSAGE_SIZE_LIMIT=0 FL_BROKER_WAIT_S=10 "$pkg/start-broker.sh" "$P" "$PORT" >start.out 2>&1; then broker_up=1; break; fi
  grep -qE "already in use|exited during start-up" start.out || break
done
[ -n "$broker_up" ] || die "could not start the broker: $(cat start.out)"

# ------------------------------------------------------------ 1. reference
# Before the controller and agent connect: the broker takes the client id
# from the certificate, so these clients would take over their sessions.
piece=$((16 << 20))
split -b "$piece" -d -a 3 v1.tar piece.
npieces=$(ls piece.* | wc -l)
ctls=(--cafile "$P/ca.crt" --cert "$P/controller.crt" --key "$P/controller.key")
devs=(--cafile "$P/ca.crt" --cert "$P/devices/dev1.crt" --key "$P/devices/dev1.key")
topic=flotilla/v1/dev/dev1/chunk/dat
timeout 600 mosquitto_sub -h 127.0.0.1 -p "$PORT" -V 5 -q 1 "${devs[@]}" -t "$topic" -C "$npieces" -N \
  >ref.out 2>ref.err &
subpid=$!
# Ready once the broker has the subscription: probe with a small message.
ready=
for _ in $(seq 100); do
  sleep 0.1
  if grep -q "dev1" "$P/broker/mosquitto.log" 2>/dev/null; then ready=1; break; fi
done
[ -n "$ready" ] || die "mosquitto_sub did not connect: $(cat ref.err)"
sleep 0.5
cat piece.* >/dev/null
t0=$(now)
for f in piece.*; do
  timeout 300 mosquitto_pub -h 127.0.0.1 -p "$PORT" -V 5 -q 1 "${ctls[@]}" -t "$topic" -f "$f" ||
    die "mosquitto_pub failed"
done
wait "$subpid" || die "mosquitto_sub failed: $(cat ref.err)"
t_ref=$(secs "$t0" "$(now)")
subpid=
cmp -s ref.out v1.tar || die "reference: the bytes received differ from the bundle"
rm -f piece.* ref.out

# ------------------------------------------------------------ controller, agent
RT=reader-token-0123456789 OT=operator-token-0123456789
cat >ctl.conf <<CONF
[controller]
data_dir = $tmp/data
listen = 127.0.0.1
port = 0
trust_dir = $tmp/trust
read_tokens = bench:$RT
operator_tokens = bench:$OT

[mqtt]
uri = ssl://127.0.0.1:$PORT
ca = $P/ca.crt
cert = $P/controller.crt
key = $P/controller.key
CONF
"$CTL" --config ctl.conf --port-file port 2>controller.log &
cpid=$!
for _ in $(seq 100); do [ -s port ] && break; sleep 0.1; done
[ -s port ] || die "controller did not start: $(tail -n 5 controller.log)"
URL=http://127.0.0.1:$(cat port)
export FLOTILLA_CONTROLLER=$URL
metric() { curl -s -H "Authorization: Bearer $RT" "$URL/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }
show() { "$FL" devices show "$1" --token $RT --json 2>/dev/null; }
wait_until() { local end=$(( SECONDS + $1 )); shift; while [ $SECONDS -lt $end ]; do "$@" && return 0; sleep 0.1; done; "$@"; }
connected() { [ "$(metric flotilla_mqtt_connected)" = 1 ]; }
wait_until 20 connected || die "controller not connected to the broker: $(tail -n 5 controller.log)"

mkdir -p dev1/trust
cp trust/* dev1/trust/
cat >dev1/agent.conf <<CONF
[agent]
id = dev1
state_dir = $tmp/dev1/state
trust_dir = $tmp/dev1/trust

[mqtt]
uri = ssl://127.0.0.1:$PORT
ca = $P/ca.crt
cert = $P/devices/dev1.crt
key = $P/devices/dev1.key
CONF
FLOTILLA_LOG_LEVEL=info "$AGENT" -c dev1/agent.conf run >agent.log 2>&1 &
apid=$!
online() { [ "$(show dev1 | jq -r .device.online)" = true ]; }
wait_until 30 online || die "dev1 did not come online: $(tail -n 5 agent.log)"
for v in 1 2; do "$FL" push "v$v.tar" --token $OT >/dev/null || die "push v$v.tar failed"; done

rejected() { # VERSION: the install failed (stop waiting)
  show dev1 | jq -e --arg v "$1" '.models[] | select(.model == "bench") | .install.version == $v and
    (.install.state == "REJECTED" or .install.state == "FAILED")' >/dev/null
}
committed() { # VERSION
  rejected "$1" && die "bench $1 rejected: $(show dev1 | jq -c '.models[0].install')"
  show dev1 | jq -e --arg v "$1" \
    '.models[] | select(.model == "bench") | .version == $v and ((.install.state // "COMMITTED") == "COMMITTED")' >/dev/null
}
deploy() { # VERSION: prints "SECONDS_TO_COMMITTED SECONDS_TO_LAST_CHUNK_SENT"
  sync
  local t0 b last cur tl end=$(( SECONDS + 600 ))
  last=$(metric flotilla_chunk_bytes_sent_total)
  t0=$(now); tl=$t0
  "$FL" deploy dev1 "bench@$1" --token $OT >/dev/null || die "deploy bench@$1 failed"
  while ! committed "$1"; do
    [ $SECONDS -lt $end ] || die "bench $1 not committed in 600 s: $(tail -n 5 agent.log)"
    cur=$(metric flotilla_chunk_bytes_sent_total)
    if [ "$cur" != "$last" ]; then last=$cur; tl=$(now); fi
    sleep 0.05
  done
  echo "$(secs "$t0" "$(now)") $(secs "$t0" "$tl")"
}
b0=$(metric flotilla_chunk_bytes_sent_total)
read -r t1 x1 <<<"$(deploy 1.0)"
b1=$(metric flotilla_chunk_bytes_sent_total)
read -r t2 x2 <<<"$(deploy 2.0)"
b2=$(metric flotilla_chunk_bytes_sent_total)

# ------------------------------------------------------------ idle agent
idle=${BENCH_IDLE_S:-10}
sleep 1
hz=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$apid/stat"; }
k0=$(ticks) s0=$(now)
sleep "$idle"
k1=$(ticks) s1=$(now)
rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$apid/status")
hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$apid/status")

mb() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / s / 1e6 }'; }
echo "bundle: $((size1 >> 20)) MiB (BENCH_MIB $MIB: F32 llama dim $dim, $layers layers; $size1 bytes); broker mosquitto TLS 1.2 on 127.0.0.1:$PORT"
echo "reference (mosquitto_pub -> broker -> mosquitto_sub, QoS 1, TLS, $npieces x 16 MiB messages): $t_ref s, $(mb "$size1" "$t_ref") MB/s"
echo "agent fetch (deploy -> last chunk/dat sent by the controller, chunks verified by the agent): $x1 s, $(mb "$size1" "$x1") MB/s"
echo "agent deploy -> committed (fetch + verify + install + state report): $t1 s, $(mb "$size1" "$t1") MB/s, $((b1 - b0)) bytes sent by the controller"
awk -v r="$t_ref" -v a="$x1" -v c="$t1" 'BEGIN { x = r / a; printf "ratio agent fetch / reference throughput: %.2fx (target >= 0.7x: %s); end to end incl. install: %.2fx\n", x, (x >= 0.7 ? "met" : "NOT met"), r / c }'
echo "fine-tune ($ft): deploy -> committed $t2 s (fetch $x2 s)"
awk -v m="$((b2 - b1))" -v s="$size2" 'BEGIN { p = 100 * m / s; printf "fine-tune bytes moved: %d of %d (%.1f%% of the bundle; target <= 15%%: %s)\n", m, s, p, (p <= 15 ? "met" : "NOT met") }'
# The agent's own account of each fetch (bytes, timeouts, mean round trip).
grep -o 'bench [0-9.]* fetched: .*' agent.log | sed 's/^/agent log: /' || true
awk -v a="$k0" -v b="$k1" -v hz="$hz" -v s0="$s0" -v s1="$s1" -v rss="$rss" -v hwm="$hwm" 'BEGIN {
  printf "agent idle over %.1f s (model committed, MQTT connected): CPU %.3f%% of one core (%d ticks), VmRSS %.1f MiB (peak %.1f MiB)\n",
    s1 - s0, 100 * (b - a) / hz / (s1 - s0), b - a, rss / 1024, hwm / 1024 }'
