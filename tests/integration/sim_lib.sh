# Helpers for the simulator tests and benches (source after
# packaging/demo/fleet-lib.sh and fleet_init). Expects SIM (flotilla-sim),
# FLOTILLA, MKMODEL.

# sim_status FIELD: one field of the simulator's status file (jq path).
sim_status() { jq -r "$1" "$FLEET_DIR/sim.status" 2>/dev/null; }

# sim_start NAME SCENARIO [ARGS...]: flotilla-sim run in the background,
# status in $FLEET_DIR/sim.status, log in $FLEET_DIR/NAME.log; SIM_PID.
sim_start() {
  local name=$1 scen=$2; shift 2
  rm -f "$FLEET_DIR/sim.status"
  "$SIM" run --uri "ssl://127.0.0.1:${SIM_PORT:-$FLEET_MQTT_PORT}" --pki "$FLEET_DIR/pki" \
    --trust "$FLEET_DIR/trust" --scenario "$scen" --status "$FLEET_DIR/sim.status" "$@" \
    >>"$FLEET_DIR/$name.log" 2>&1 &
  SIM_PID=$!
  FLEET_EXTRA_PIDS+=("$SIM_PID")
}
sim_stop() {
  [ -n "${SIM_PID:-}" ] || return 0
  kill -TERM "$SIM_PID" 2>/dev/null
  timeout 20 tail --pid="$SIM_PID" -f /dev/null || kill -KILL "$SIM_PID" 2>/dev/null
  wait "$SIM_PID" 2>/dev/null
  SIM_PID=
}
sim_ge() { [ "$(sim_status "$1")" -ge "$2" ] 2>/dev/null; } # FIELD MIN

# sim_bundle VERSION SEQ: a signed tiny model bundle pushed to the controller.
sim_bundle() {
  local v=$1 seq=$2 d=$FLEET_DIR/bundles
  mkdir -p "$d"
  "$MKMODEL" --arch llama --vocab tiny --dim 64 --layers 2 --heads 4 --kv-heads 2 \
    --ffn 128 --ctx 256 --type q8_0 --seed "$seq" -o "$d/tiny-$v.gguf" >/dev/null &&
  "$FLOTILLA" bundle create -o "$d/tiny-$v.tar" --key "$FLEET_DIR/keys/release.pem" --name tiny \
    --arch aarch64,x86_64 --version "$v" --sequence "$seq" "$d/tiny-$v.gguf" >/dev/null &&
  "$FLOTILLA" push "$d/tiny-$v.tar" --token "$FLEET_OT" >/dev/null
}

# rollout_field ID JQ
rollout_field() { fleet_rollout "$1" | jq -r "$2" 2>/dev/null; }
rollout_is() { [ "$(fleet_rollout_state "$1")" = "$2" ]; }
rollout_done() { local s; s=$(fleet_rollout_state "$1"); [ "$s" != running ] && [ -n "$s" ]; }

# ctl_rss_kb / ctl_cpu_s: of the controller process
proc_rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null; }
proc_hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null; }
proc_cpu_s() { # utime + stime in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null
}
broker_pid() { cat "$FLEET_DIR/pki/broker/mosquitto.pid" 2>/dev/null; }
