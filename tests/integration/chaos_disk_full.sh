#!/usr/bin/env bash
# Agent disk full during staging (issue 11, docs/scale.md "Chaos"): a real
# `flotilla-agent run` whose state directory (slots, journal, telemetry
# outbox) is on a 16 MiB tmpfs mounted by the test; real broker, controller
# and signed bundles, deploys over MQTT.
#
# 1. tiny 1.0 (+ 1 MiB data) installs; its files' SHA-256 are recorded.
# 2. tiny 1.1 carries 20 MiB of data, more than the whole disk: refused
#    before anything is fetched (REJECTED, install_rejected reason no_space
#    at the controller); 1.0 byte-identical and still answering.
# 3. tiny 1.2 (+ 6 MiB) fits when it starts; once its fetch is under way
#    the rest of the tmpfs is filled by another writer (dd): the install
#    either completes in the space it reserved (posix_fallocate at staging)
#    or ends REJECTED with reason no_space; either way the agent keeps
#    running, keeps a working model (the old one byte-identical when it was
#    refused) and answers completions while the disk is full.
# 4. The filler is removed: tiny 1.3 installs and serves; telemetry arrived
#    exactly once; `flotilla-agent check` after a clean stop finds 0
#    problems. The tmpfs is unmounted on every exit path.
#
#   chaos_disk_full.sh FLOTILLA CONTROLLER AGENT MKMODEL
set -uo pipefail
if [ $# -ne 4 ]; then
  echo "usage: chaos_disk_full.sh FLOTILLA CONTROLLER AGENT MKMODEL" >&2
  exit 2
fi
FLOTILLA=$1 MKMODEL=$4
export FLEET_FLOTILLA=$1 FLEET_CONTROLLER_BIN=$2 FLEET_AGENT_BIN=$3
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
. "$src/packaging/demo/fleet-lib.sh"
. "$here/sim_lib.sh"
. "$here/chaos_lib.sh"
command -v sqlite3 >/dev/null || { echo "FAIL: sqlite3 not installed"; exit 1; }
[ "$(id -u)" = 0 ] || chaos_skip "mounting a tmpfs needs root"
probe=$(mktemp -d) && mount -t tmpfs -o size=1m "flchaos-probe-$$" "$probe" 2>/dev/null &&
  umount "$probe" || { rmdir "$probe" 2>/dev/null; chaos_skip "this machine refuses mount -t tmpfs"; }
rmdir "$probe"
t0=$SECONDS
ID=df1

chaos_init chaos_disk_full
fleet_pki $ID
fleet_broker_start
fleet_trust tiny
fleet_controller_start
DISK=$FLEET_DIR/disk
chaos_tmpfs "$DISK" 16m || fleet_die "mount tmpfs on $DISK"
CHAOS_STATE_DIR[$ID]=$DISK/state
chaos_agent_start $ID "" 127.0.0.1 $'bandwidth = 524288\ndisk_reserve = 1048576'
check "agent online (state directory on a 16 MiB tmpfs)" fleet_wait_online 60 $ID
check "its local API answers" chaos_wait 20 chaos_api_up $ID

st() { "$FLEET_AGENT_BIN" -c "$FLEET_DIR/$ID/agent.conf" status --json 2>/dev/null; }
last() { st | jq -r ".models.tiny.last_install.$1 // empty"; }
# SHA-256 of the files of the current slot (what is being served).
cur_sums() {
  local dir
  dir=$(st | jq -r '.models.tiny as $m | $m.slots[$m.current].path // empty')
  [ -n "$dir" ] && [ -d "$dir" ] || dir=$DISK/state/models/tiny/$(st | jq -r .models.tiny.current)
  (cd "$dir" && find . -type f ! -name '.*' -print0 | sort -z | xargs -0 sha256sum) 2>/dev/null
}
installed() { [ "$(fleet_agent_version $ID tiny)" = "$1" ] && [ "$(last state)" = COMMITTED ]; }
ended() { case $(last state) in COMMITTED|REJECTED|ROLLED_BACK) [ "$(last version)" = "$1" ] ;; *) return 1 ;; esac; }
alive() { kill -0 "${FLEET_AGENT_PID[$ID]}" 2>/dev/null; }
deploy() { "$FLOTILLA" deploy $ID "tiny@$1" --token "$FLEET_OT" >/dev/null; }
free_kib() { df -k --output=avail "$DISK" | tail -1 | tr -d ' '; }
rejected_no_space() { # VERSION: the controller stored install_rejected no_space for it
  [ "$(chaos_db "SELECT COUNT(*) FROM telemetry WHERE device='$ID' AND kind='event:install_rejected'
       AND json_extract(body,'\$.version')='$1' AND json_extract(body,'\$.reason')='no_space'")" -ge 1 ]
}

# ---------------------------------------------------------------- 1
chaos_bundle 1.0 1 1024 || fleet_die "bundle 1.0"
deploy 1.0 || bad "deploy 1.0"
check "1: 1.0 installs" chaos_wait 60 installed 1.0
sums0=$(cur_sums)
check "1: its files are recorded ($(wc -l <<<"$sums0") files)" [ -n "$sums0" ]
echo "free on the tmpfs: $(free_kib) KiB"

# ---------------------------------------------------------------- 2
echo "--- 2: a bundle larger than the disk"
chaos_bundle 1.1 2 20480 || fleet_die "bundle 1.1"
deploy 1.1 || bad "deploy 1.1"
check "2: refused at once (agent log: install.rejected ... needs N bytes)" \
  chaos_wait 60 grep -q 'install.rejected tiny 1.1: deploy refused: needs [0-9]* bytes' "$FLEET_DIR/$ID/agent.log"
grep 'install.rejected tiny 1.1' "$FLEET_DIR/$ID/agent.log" | sed 's/^.*info: /2: /'
check "2: nothing was staged: the journal's last install is still 1.0 COMMITTED" \
  [ "$(last version)/$(last state)" = 1.0/COMMITTED ]
check "2: the controller got install_rejected with reason no_space" chaos_wait 30 rejected_no_space 1.1
check "2: 1.0 is still current, its files byte-identical" \
  bash -c "[ '$(fleet_agent_version $ID tiny)' = 1.0 ] && [ '$(cur_sums)' = '$sums0' ]"
check "2: the agent is still running" alive
check "2: ... and answers a completion" chaos_generate_all $ID

# ---------------------------------------------------------------- 3
echo "--- 3: the disk fills up while 1.2 is fetched"
chaos_bundle 1.2 3 6144 || fleet_die "bundle 1.2"
deploy 1.2 || bad "deploy 1.2"
check "3: 1.2 is being fetched" chaos_wait 60 chaos_fetching $ID
sleep 1
dd if=/dev/zero of="$DISK/filler" bs=64k 2>/dev/null # until ENOSPC
echo "3: filler $(du -k "$DISK/filler" | cut -f1) KiB written; free now $(free_kib) KiB; install $(last state)"
check "3: the disk is full" [ "$(free_kib)" -lt 64 ]
check "3: while the disk is full the agent answers a completion" chaos_generate_all $ID
check "3: the install of 1.2 ends (committed or refused)" chaos_wait 90 ended 1.2
echo "3: last install: $(st | jq -c .models.tiny.last_install)"
check "3: the agent is still running" alive
case $(last state) in
  COMMITTED)
    echo "3: 1.2 completed inside the space its staging had reserved"
    check "3: 1.2 is current" [ "$(fleet_agent_version $ID tiny)" = 1.2 ] ;;
  REJECTED)
    check "3: refused with reason no_space ($(last error))" chaos_wait 30 rejected_no_space 1.2
    check "3: 1.0 is still current, its files byte-identical" \
      bash -c "[ '$(fleet_agent_version $ID tiny)' = 1.0 ] && [ '$(cur_sums)' = '$sums0' ]" ;;
  *) bad "3: 1.2 ended $(last state)" ;;
esac
check "3: a completion after the install ended, disk still full" chaos_generate_all $ID

# ---------------------------------------------------------------- 4
echo "--- 4: space freed, a later install works"
rm -f "$DISK/filler"
chaos_bundle 1.3 4 1024 || fleet_die "bundle 1.3"
deploy 1.3 || bad "deploy 1.3"
check "4: 1.3 installs" chaos_wait 90 installed 1.3
check "4: the local API answers with 1.3" chaos_wait 20 chaos_generate_all $ID
check "4: served version is 1.3" \
  [ "$(chaos_api $ID /v1/status | jq -r '.models.tiny.version // empty')" = 1.3 ]
echo "$ID: events $(chaos_events $ID)"
check "telemetry reached the controller exactly once" chaos_tele_once $ID
check "after a clean stop, flotilla-agent check finds 0 problems" chaos_agent_check $ID
if [ "$fails" != 0 ]; then
  FLEET_FAILED=1
  echo "--- agent log (tail)"; tail -n 25 "$FLEET_DIR/$ID/agent.log"
fi
echo "total $((SECONDS - t0)) s"
finish
