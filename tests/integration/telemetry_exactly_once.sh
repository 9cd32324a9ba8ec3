#!/usr/bin/env bash
# Telemetry is never lost nor doubled (docs/telemetry.md): while an agent
# produces events (a junk bundle dropped in its spool every 0.2 s: one
# install_rejected event each) and metrics (every second), the broker is
# stopped for a while, the controller is killed with -9 and restarted (while
# records flow), the agent is killed with -9 and restarted. Afterwards the
# controller's store holds every sequence number from 1 to the agent's last
# exactly once (no gap: nothing was dropped), every junk bundle's event is
# there, and the duplicates that the restarts caused were refused as such.
#
# usage: telemetry_exactly_once.sh FLOTILLA FLOTILLA-CONTROLLER FLOTILLA-AGENT
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/telemetry_lib.sh" "$1" "$2" "$3"
tele_setup tele-once dev1

D=$FLEET_DIR/dev1
tele_agent_start dev1 "resend_after = 5"
check "agent dev1 online" fleet_wait_online 30 dev1

# Events: junk bundles into the spool, numbered, until told to stop.
producer() {
  local n=0
  while [ ! -e "$FLEET_DIR/stop-producer" ]; do
    n=$((n + 1))
    head -c 300 /dev/urandom >"$D/junk-$n.tmp" && mv "$D/junk-$n.tmp" "$D/state/spool/junk-$n.tar"
    sleep 0.2
  done
}
producer &
FLEET_EXTRA_PIDS+=($!)

sleep 5
check "records arrive" test "$(q "SELECT COUNT(*) FROM telemetry WHERE device='dev1'")" -gt 3

# 1. Broker down for 8 s: the agent keeps producing into its outbox.
broker_stop
sleep 8
check "outbox holds records while the broker is down" \
  test "$(qa dev1 'SELECT COUNT(*) FROM tele_outbox')" -gt 5
check "broker restarts" broker_start
sleep 4

# 2. Controller killed with -9 while records flow, restarted 3 s later.
controller_kill9
sleep 3
fleet_controller_start
sleep 4

# 3. Agent killed with -9, restarted 3 s later.
fleet_agent_stop dev1 KILL
sleep 3
tele_agent_start dev1 "resend_after = 5"
sleep 4

# 4. Once more, the controller, in the middle of the agent's reconnect burst.
controller_kill9
sleep 1
fleet_controller_start

# Stop producing; wait until every junk bundle is handled and the outbox is
# empty (everything confirmed by the controller).
touch "$FLEET_DIR/stop-producer"
sleep 1
spool_done() { ! ls "$D/state/spool/"*.tar >/dev/null 2>&1; }
check "every junk bundle handled" fleet_wait 60 spool_done
next=$(qa dev1 "SELECT v FROM tele_meta WHERE k='next_seq'")
stream=$(qa dev1 "SELECT v FROM tele_meta WHERE k='stream'")
last=$((next - 1))
echo "agent produced seqs 1..$last by now (stream $stream); metrics go on"
confirmed() { [ "$(qa dev1 "SELECT COUNT(*) FROM tele_outbox WHERE seq <= $last")" = 0 ]; }
check "the agent's outbox lets 1..$last go (confirmed by the controller)" fleet_wait 60 confirmed
sleep 1
read -r cnt mn mx dist <<<"$(q "SELECT COUNT(*), MIN(seq), MAX(seq), COUNT(DISTINCT seq)
  FROM telemetry WHERE device='dev1' AND stream='$stream' AND seq <= $last" | tr '|' ' ')"
echo "controller holds $cnt of them, seqs $mn..$mx ($dist distinct)"
check "every record 1..$last is stored" test "$cnt" = "$last" -a "$mn" = 1 -a "$mx" = "$last"
check "each exactly once" test "$dist" = "$cnt"
check "no record of another stream" \
  test "$(q "SELECT COUNT(*) FROM telemetry WHERE device='dev1' AND stream<>'$stream'")" = 0
check "nothing reported dropped" \
  test "$(q "SELECT COUNT(*) FROM telemetry WHERE device='dev1' AND kind='dropped'")" = 0

# Every junk bundle has its install_rejected event (a bundle retried after
# the kill may have two: two attempts, two events).
files=$(ls "$D/state/spool/rejected" | wc -l)
events=$(q "SELECT COUNT(*) FROM telemetry WHERE device='dev1' AND kind='event:install_rejected'")
missing=0
for f in "$D"/state/spool/rejected/*.tar; do
  b=$(basename "$f")
  n=$(q "SELECT COUNT(*) FROM telemetry WHERE device='dev1' AND kind='event:install_rejected'
         AND json_extract(body,'\$.text') LIKE '%/$b refused%'")
  [ "$n" -ge 1 ] || missing=$((missing + 1))
done
echo "$files junk bundles, $events install_rejected events"
check "every junk bundle's event is stored" test "$missing" = 0 -a "$files" -gt 20
check "events carry the failed check and the error" test "$(q "SELECT COUNT(*) FROM telemetry
  WHERE device='dev1' AND kind='event:install_rejected' AND json_extract(body,'\$.reason') <> ''
  AND json_extract(body,'\$.details.error') IS NOT NULL")" = "$events"
check "metrics: device records with link counters" \
  test "$(q "SELECT COUNT(*) FROM telemetry WHERE device='dev1' AND kind='device'
             AND json_extract(body,'\$.reconnects') >= 1")" -gt 0
dups=$(fleet_metric 'flotilla_telemetry_records_total{result="duplicate"}')
echo "duplicates refused by the controller since its last start: ${dups:-?}"
gaps=$(q "SELECT missing_seqs FROM gaps WHERE device='dev1'")
check "gap tracker: nothing missing" test "${gaps:-0}" = 0

finish
