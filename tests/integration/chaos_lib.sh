# shellcheck shell=bash
# Helpers of the chaos tests with real agents (docs/scale.md "Chaos"). Source
# after lib.sh, packaging/demo/fleet-lib.sh and sim_lib.sh; call chaos_init
# NAME instead of fleet_init: it also installs chaos_cleanup, which removes
# the network namespaces (their veths and iptables rules go with them),
# unmounts the tmpfs mounts and stops the processes the test started, then
# runs fleet_cleanup, on every exit path.
#
#   chaos_skip WHY                      # print SKIP, exit 77 (ctest: skipped)
#   chaos_netns_or_skip                 # SKIP unless ip netns + iptables work
#   chaos_ns_add I                      # namespace I: 10.231.I.2 <-> 10.231.I.1
#   chaos_pki GATEWAY_IP... -- DEVICE...# fleet_pki, server cert names the IPs
#   chaos_agent_start ID NS GW [LINES]  # an agent inside NS, broker at GW
#   chaos_cut ID drop|reject / chaos_loss ID P / chaos_heal ID
#   chaos_generate ID                   # the local API answers a completion
#   chaos_agent_check ID                # stop ID, `flotilla-agent check`: 0 problems
#   chaos_tele_once ID                  # store holds seqs 1..last exactly once

CHAOS_NET=${CHAOS_NET:-10.231}
CHAOS_TOKEN=chaos-token-0123
CHAOS_NS=()      # namespaces made by this run
CHAOS_MOUNTS=()  # tmpfs mount points made by this run
declare -A CHAOS_AGENT_NS=() CHAOS_AGENT_DEV=() CHAOS_NS_DEV=() CHAOS_STATE_DIR=() CHAOS_PORT=()

chaos_skip() { echo "SKIP: $*"; exit 77; }

# chaos_wait SECONDS COMMAND...: poll until COMMAND succeeds, bounded by
# wall time (fleet_wait counts polls, which stretch on a loaded machine).
chaos_wait() {
  local end=$((SECONDS + $1)); shift
  while :; do
    "$@" && return 0
    [ $SECONDS -lt "$end" ] || return 1
    sleep 0.3
  done
}

chaos_init() { # NAME
  fleet_init "$1"
  trap chaos_cleanup EXIT
  main_pid=$$
  ( trap 'kill "$s" 2>/dev/null; exit 0' TERM
    sleep "${FL_TEST_WATCHDOG_S:-280}" & s=$!
    wait "$s" && { echo "FAIL: watchdog (${FL_TEST_WATCHDOG_S:-280} s)"; kill -TERM "$main_pid"; } ) &
  FLEET_EXTRA_PIDS+=($!)
}

chaos_cleanup() {
  local rc=$? ns m p id
  trap - EXIT
  # Agents first (SIGTERM, 10 s, SIGKILL), then whatever still runs inside
  # our namespaces (only what this test started there), then the
  # namespaces (their veths and iptables rules go with them) and the tmpfs
  # mounts; fleet_cleanup stops the rest and removes the directory.
  for id in "${!FLEET_AGENT_PID[@]}"; do kill -TERM "${FLEET_AGENT_PID[$id]}" 2>/dev/null; done
  for id in "${!FLEET_AGENT_PID[@]}"; do
    timeout 10 tail --pid="${FLEET_AGENT_PID[$id]}" -f /dev/null ||
      kill -KILL "${FLEET_AGENT_PID[$id]}" 2>/dev/null
  done
  FLEET_AGENT_PID=()
  for ns in "${CHAOS_NS[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null || echo "WARN: ip netns del $ns failed"
  done
  CHAOS_NS=()
  for m in "${CHAOS_MOUNTS[@]}"; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "WARN: umount $m failed"
  done
  CHAOS_MOUNTS=()
  (exit "$rc")
  fleet_cleanup
}

# chaos_tmpfs DIR SIZE: a tmpfs of SIZE (mount -o size=) on DIR, unmounted
# by chaos_cleanup.
chaos_tmpfs() {
  mkdir -p "$1"
  mount -t tmpfs -o "size=$2,mode=0755" "flchaos-$$" "$1" || return 1
  CHAOS_MOUNTS+=("$1")
}

# ---------------------------------------------------------------- namespaces

chaos_netns_or_skip() {
  [ "$(id -u)" = 0 ] || chaos_skip "network namespaces need root"
  command -v ip >/dev/null || chaos_skip "ip (iproute2) not installed"
  command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] ||
    chaos_skip "iptables not installed (bash packaging/deps.sh)"
  local ns=flchaos-probe-$$
  ip netns add "$ns" 2>/dev/null || chaos_skip "this machine refuses 'ip netns add'"
  if ! ip netns exec "$ns" iptables -A OUTPUT -m statistic --mode random --probability 0.1 -j DROP \
       2>/dev/null; then
    ip netns del "$ns"
    chaos_skip "iptables (statistic match) refused inside a namespace"
  fi
  ip netns del "$ns"
  local i
  for i in 1 2 3 4 5 6 7 8; do
    ip -4 -o addr show | grep -q " $CHAOS_NET\.$i\.1/" &&
      chaos_skip "$CHAOS_NET.$i.1 already on an interface (a previous run's veth? ip link)"
  done
  return 0
}

# chaos_ns_add I: namespace flchaos-PID-I with a veth pair: fcPIDhI in the
# root namespace (10.231.I.1/24), fcPIDdI inside (10.231.I.2/24, default
# route to .1, loopback up). Prints nothing; fails the test on error.
chaos_ns_add() {
  local i=$1 ns=flchaos-$$-$1 h=fc$$h$1 d=fc$$d$1
  ip netns add "$ns" || fleet_die "ip netns add $ns"
  CHAOS_NS+=("$ns")
  CHAOS_NS_DEV[$ns]=$d
  ip link add "$h" type veth peer name "$d" netns "$ns" &&
  ip addr add "$CHAOS_NET.$i.1/24" dev "$h" && ip link set "$h" up &&
  ip -n "$ns" addr add "$CHAOS_NET.$i.2/24" dev "$d" && ip -n "$ns" link set "$d" up &&
  ip -n "$ns" link set lo up && ip -n "$ns" route add default via "$CHAOS_NET.$i.1" ||
    fleet_die "veth for $ns"
}

# chaos_pki IP... -- DEVICE...: like fleet_pki; the server certificate also
# names IP... (the broker as the namespaces see it).
chaos_pki() {
  local P=$FLEET_DIR/pki ips=() d
  while [ $# -gt 0 ] && [ "$1" != -- ]; do ips+=(--ip "$1"); shift; done
  shift
  pki() { "$FLEET_FLOTILLA" pki "$@" >/dev/null || fleet_die "flotilla pki $* failed"; }
  pki init --dir "$P"
  pki issue-server --dir "$P" --dns localhost --ip 127.0.0.1 "${ips[@]}"
  pki issue-controller --dir "$P"
  for d in "$@"; do pki issue-device "$d" --dir "$P"; done
}

# chaos_agent_conf ID GW_HOST STATE_DIR [LINES for [agent]]: the config of
# an agent with a local API on 127.0.0.1:8080 of its network namespace (own
# loopback: the same port for every agent) and telemetry every second.
chaos_agent_conf() {
  local id=$1 gw=$2 st=$3 extra=${4:-} d=$FLEET_DIR/$1
  mkdir -p "$d/trust"
  cp "$FLEET_DIR/trust/"* "$d/trust/"
  cat >"$d/agent.conf" <<CONF
[agent]
id = $id
state_dir = $st
trust_dir = $d/trust
labels = site=chaos
$extra

[mqtt]
uri = ssl://$gw:$FLEET_MQTT_PORT
ca = $FLEET_DIR/pki/ca.crt
cert = $FLEET_DIR/pki/devices/$id.crt
key = $FLEET_DIR/pki/devices/$id.key

[hw]
arch = x86_64
ram_mb = 4096

[serve]
listen = 127.0.0.1:$(chaos_port "$id")
token = $CHAOS_TOKEN

[telemetry]
interval = 1
resend_after = 5
CONF
}

# chaos_agent_start ID NS GW [LINES for [agent]]: `flotilla-agent run` inside
# network namespace NS (empty: the root namespace), broker at GW. With
# $CHAOS_PRELOAD set, the agent runs with that environment (env VAR=...).
chaos_agent_start() {
  local id=$1 ns=$2 gw=$3 extra=${4:-} d=$FLEET_DIR/$1
  [ -n "$ns" ] || [ -n "${CHAOS_PORT[$id]:-}" ] || chaos_pick_port "$id" || fleet_die "no free port"
  [ -f "$d/agent.conf" ] || chaos_agent_conf "$id" "$gw" "${CHAOS_STATE_DIR[$id]:-$d/state}" "$extra"
  local pre=()
  [ -n "$ns" ] && pre=(ip netns exec "$ns")
  # shellcheck disable=SC2086
  "${pre[@]}" env ${CHAOS_ENV:-} "$FLEET_AGENT_BIN" -c "$d/agent.conf" run >>"$d/agent.log" 2>&1 &
  FLEET_AGENT_PID[$id]=$!
  CHAOS_AGENT_NS[$id]=$ns
  [ -n "$ns" ] && CHAOS_AGENT_DEV[$id]=${CHAOS_NS_DEV[$ns]}
}

# Run a command in agent ID's network namespace.
chaos_in() { local id=$1; shift; if [ -n "${CHAOS_AGENT_NS[$id]:-}" ]; then ip netns exec "${CHAOS_AGENT_NS[$id]}" "$@"; else "$@"; fi; }

chaos_api() { # ID PATH [curl args]
  local id=$1 p=$2; shift 2
  chaos_in "$id" curl -s -m 30 -H "Authorization: Bearer $CHAOS_TOKEN" "$@" \
    "http://127.0.0.1:$(chaos_port "$id")$p"
}
chaos_api_up() { chaos_in "$1" curl -s -m 2 -o /dev/null "http://127.0.0.1:$(chaos_port "$1")/healthz"; }
# The local API's port: 8080 inside a namespace (its own loopback), else a
# free one picked at random when the config is written (CHAOS_PORT[ID]).
chaos_port() { echo "${CHAOS_PORT[$1]:-8080}"; }
chaos_pick_port() { CHAOS_PORT[$1]=$(free_port); } # ID: lib.sh free_port

# chaos_generate ID [MODEL]: the local API answers a completion (some text,
# at least one generated token). Prints the answer's text on stdout.
chaos_generate() {
  local out
  out=$(chaos_api "$1" /v1/completions -H 'Content-Type: application/json' \
        -d "{\"model\":\"${2:-tiny}\",\"prompt\":\"Hello\",\"max_tokens\":4,\"temperature\":0}") || return 1
  [ "$(jq -r '.usage.completion_tokens // 0' <<<"$out" 2>/dev/null)" -ge 1 ] 2>/dev/null &&
    jq -e '.choices[0].text | type == "string"' <<<"$out" >/dev/null 2>&1 || return 1
  jq -c '.choices[0].text' <<<"$out"
}
chaos_generate_all() { local id; for id in "$@"; do chaos_generate "$id" >/dev/null || return 1; done; }

# chaos_agent_check ID: stop the agent (SIGTERM) and run `flotilla-agent
# check` on its state: it must find nothing to repair.
chaos_agent_check() {
  local id=$1 out
  fleet_agent_stop "$id"
  out=$("$FLEET_AGENT_BIN" -c "$FLEET_DIR/$id/agent.conf" check 2>&1)
  echo "$id: $out"
  grep -q '^check: 0 problem(s)' <<<"$out"
}

# The agent's own view: install state of MODEL (tiny).
chaos_install_state() {
  "$FLEET_AGENT_BIN" -c "$FLEET_DIR/$1/agent.conf" status --json 2>/dev/null |
    jq -r --arg m "${2:-tiny}" '.models[$m].last_install.state // empty' 2>/dev/null
}
chaos_fetching() { [ "$(chaos_install_state "$1")" = FETCHING ]; }

# ---------------------------------------------------------------- iptables
# Rules only inside the agent's namespace (gone with it), on its veth: the
# local API on the namespace's loopback stays reachable.
chaos_ipt() { local id=$1; shift; ip netns exec "${CHAOS_AGENT_NS[$id]}" iptables -w 5 "$@"; }
chaos_cut() { # ID drop|reject
  local id=$1 dev=${CHAOS_AGENT_DEV[$1]}
  if [ "$2" = drop ]; then
    chaos_ipt "$id" -I INPUT -i "$dev" -j DROP && chaos_ipt "$id" -I OUTPUT -o "$dev" -j DROP
  else
    chaos_ipt "$id" -I INPUT -i "$dev" -p tcp -j REJECT --reject-with tcp-reset &&
    chaos_ipt "$id" -I OUTPUT -o "$dev" -p tcp -j REJECT --reject-with tcp-reset
  fi
}
chaos_loss() { # ID PROBABILITY: each packet either way dropped at random
  local id=$1 dev=${CHAOS_AGENT_DEV[$1]}
  chaos_ipt "$id" -A INPUT -i "$dev" -m statistic --mode random --probability "$2" -j DROP &&
  chaos_ipt "$id" -A OUTPUT -o "$dev" -m statistic --mode random --probability "$2" -j DROP
}
chaos_heal() { chaos_ipt "$1" -F INPUT && chaos_ipt "$1" -F OUTPUT; }
chaos_drops() { # ID: packets dropped or rejected by our rules so far
  chaos_ipt "$1" -L -v -n -x 2>/dev/null | awk '$3 == "DROP" || $3 == "REJECT" {n += $1} END {print n + 0}'
}

# ---------------------------------------------------------------- telemetry
# chaos_tele_once ID: every record the agent numbered so far (seq 1..last
# of its current stream) reaches the controller's store exactly once: wait
# until the agent's outbox holds none of them (all confirmed), then count.
chaos_db() { sqlite3 -cmd '.timeout 5000' "$FLEET_DIR/controller-data/controller.db" "$1" 2>/dev/null; }
chaos_adb() { sqlite3 -cmd '.timeout 5000' "$(chaos_state "$1")/state.db" "$2" 2>/dev/null; }
chaos_state() { echo "${CHAOS_STATE_DIR[$1]:-$FLEET_DIR/$1/state}"; }
chaos_tele_once() {
  local id=$1 next stream last cnt mn mx dist
  next=$(chaos_adb "$id" "SELECT v FROM tele_meta WHERE k='next_seq'")
  stream=$(chaos_adb "$id" "SELECT v FROM tele_meta WHERE k='stream'")
  last=$((next - 1))
  [ "$last" -ge 1 ] || { echo "$id: no telemetry numbered"; return 1; }
  _chaos_confirmed() { [ "$(chaos_adb "$id" "SELECT COUNT(*) FROM tele_outbox WHERE seq <= $last")" = 0 ]; }
  chaos_wait 60 _chaos_confirmed || { echo "$id: records 1..$last not all confirmed"; return 1; }
  read -r cnt mn mx dist <<<"$(chaos_db "SELECT COUNT(*), MIN(seq), MAX(seq), COUNT(DISTINCT seq)
    FROM telemetry WHERE device='$id' AND stream='$stream' AND seq <= $last" | tr '|' ' ')"
  echo "$id: seqs 1..$last numbered, the store holds $cnt ($mn..$mx, $dist distinct)"
  [ "$cnt" = "$last" ] && [ "$mn" = 1 ] && [ "$mx" = "$last" ] && [ "$dist" = "$cnt" ]
}
# The kinds of event records the controller stored for ID, "kind:count ...".
chaos_events() {
  chaos_db "SELECT kind || ':' || COUNT(*) FROM telemetry WHERE device='$1' AND kind LIKE 'event:%'
            GROUP BY kind ORDER BY kind" | sed 's/^event://' | tr '\n' ' '
}

# chaos_bundle VERSION SEQ [DATA_KIB]: a signed tiny model (+ DATA_KIB of
# random data, so the transfer takes a while) pushed to the controller.
chaos_bundle() {
  local v=$1 seq=$2 kib=${3:-0} d=$FLEET_DIR/bundles files=()
  mkdir -p "$d"
  "$MKMODEL" --arch llama --vocab tiny --dim 64 --layers 2 --heads 4 --kv-heads 2 \
    --ffn 128 --ctx 256 --type q8_0 --seed "$seq" -o "$d/tiny-$v.gguf" >/dev/null || return 1
  files=("$d/tiny-$v.gguf")
  if [ "$kib" -gt 0 ]; then
    head -c $((kib << 10)) /dev/urandom >"$d/data-$v.bin" && files+=("$d/data-$v.bin")
  fi
  "$FLOTILLA" bundle create -o "$d/tiny-$v.tar" --key "$FLEET_DIR/keys/release.pem" --name tiny \
    --arch aarch64,x86_64 --version "$v" --sequence "$seq" "${files[@]}" >/dev/null &&
  "$FLOTILLA" push "$d/tiny-$v.tar" --token "$FLEET_OT" >/dev/null
}
