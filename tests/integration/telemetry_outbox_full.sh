#!/usr/bin/env bash
# A full outbox end to end (docs/telemetry.md "Bounds"): an agent with a
# tiny outbox (16 records) reports every second while the broker is down and
# its spool gets junk bundles (one install_rejected event each). When the
# broker is back: every event reaches the controller, the oldest metrics of
# the outage are gone, and a "dropped" record says which ones and how many;
# every sequence number 1..last is either stored or inside a reported drop
# range, so the controller's gap tracker shows nothing missing.
#
# usage: telemetry_outbox_full.sh FLOTILLA FLOTILLA-CONTROLLER FLOTILLA-AGENT
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/telemetry_lib.sh" "$1" "$2" "$3"
tele_setup tele-full dev1

D=$FLEET_DIR/dev1
tele_agent_start dev1 "outbox_max_records = 16
resend_after = 5"
check "agent dev1 online" fleet_wait_online 30 dev1
sleep 3

# The controller is stopped too and started first when the broker is
# back, so that it listens before the agent sends its backlog.
fleet_controller_stop
broker_stop
for i in $(seq 8); do
  head -c 200 /dev/urandom >"$D/j.tmp" && mv "$D/j.tmp" "$D/state/spool/junk-$i.tar"
done
# 8 events and about 25 metrics for a bound of 16 records.
sleep 25
stored=$(qa dev1 'SELECT COUNT(*) FROM tele_outbox')
events=$(qa dev1 'SELECT COUNT(*) FROM tele_outbox WHERE cls=1')
dropped=$(qa dev1 "SELECT v FROM tele_meta WHERE k='dropped_records'")
echo "outbox while offline: $stored records, $events events, $dropped metrics dropped"
check "the outbox stays within its bound" test "$stored" -le 16
check "all 8 events kept" test "$events" = 8
check "metrics were dropped" test "${dropped:-0}" -gt 5
check "broker restarts" broker_start
fleet_controller_start

next=$(qa dev1 "SELECT v FROM tele_meta WHERE k='next_seq'")
stream=$(qa dev1 "SELECT v FROM tele_meta WHERE k='stream'")
last=$((next - 1))
confirmed() { [ "$(qa dev1 "SELECT COUNT(*) FROM tele_outbox WHERE seq <= $last")" = 0 ]; }
# Everything up to LAST has left the outbox (confirmed or dropped) and no
# drop report is pending.
settled() {
  [ "$(qa dev1 "SELECT COUNT(*) FROM tele_outbox WHERE seq <= $last OR cls = 2")" = 0 ]
}
check "the outbox drains up to $last" fleet_wait 60 settled
sleep 1
dropped=$(qa dev1 "SELECT v FROM tele_meta WHERE k='dropped_records'")
check "every event at the controller" \
  test "$(q "SELECT COUNT(*) FROM telemetry WHERE device='dev1' AND kind='event:install_rejected'")" = 8
drops=$(q "SELECT COUNT(*), COALESCE(SUM(json_extract(body,'\$.count')),0) FROM telemetry
           WHERE device='dev1' AND kind='dropped'" | tr '|' ' ')
read -r nrep ndrop <<<"$drops"
echo "controller: $nrep drop report(s) counting $ndrop metrics (agent: $dropped)"
check "the drop is reported to the controller" test "$nrep" -ge 1 -a "$ndrop" = "$dropped"
# Every seq 1..last: stored, or inside a reported range.
missing=$(q "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $last)
  SELECT COUNT(*) FROM n WHERE x NOT IN (SELECT seq FROM telemetry WHERE device='dev1'
    AND stream='$stream')
  AND NOT EXISTS (SELECT 1 FROM telemetry t, json_each(json_extract(t.body,'\$.ranges')) r
    WHERE t.device='dev1' AND t.kind='dropped'
    AND x BETWEEN json_extract(r.value,'\$[0]') AND json_extract(r.value,'\$[1]'))")
check "no gap except the reported drops" test "$missing" = 0
hi_all=$(q "SELECT MAX(seq) FROM telemetry WHERE device='dev1'")
lost=$(q "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $hi_all)
  SELECT COUNT(*) FROM n WHERE x NOT IN (SELECT seq FROM telemetry WHERE device='dev1')")
# A metric sent but not yet confirmed may be dropped too: the report counts
# it, the controller has it. So absent <= reported, never more.
check "what is absent was counted as dropped ($lost <= $dropped)" \
  test "$lost" -ge 1 -a "$lost" -le "$dropped"
# The oldest metrics of the outage went, the newest stayed.
# Every metric stored after the first absent one is newer than every absent one.
absent="WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $hi_all)
  SELECT x FROM n WHERE x NOT IN (SELECT seq FROM telemetry WHERE device='dev1')"
read -r lo hi <<<"$(q "SELECT MIN(x), MAX(x) FROM ($absent)" | tr '|' ' ')"
after=$(q "SELECT MIN(seq) FROM telemetry WHERE device='dev1' AND kind='device' AND seq > ${lo:-0}")
kept=$(q "SELECT COUNT(*) FROM telemetry WHERE device='dev1' AND kind='device' AND seq > ${hi:-0}")
echo "absent ${lo:-?}..${hi:-?}; first metric kept after: ${after:-none}; $kept newer kept"
check "oldest metrics dropped first, newer kept" \
  test "${lo:-0}" -gt 1 -a "${after:-0}" -gt "${hi:-0}" -a "$kept" -ge 1
gaps=$(q "SELECT missing_seqs FROM gaps WHERE device='dev1'")
check "gap tracker: nothing missing" test "${gaps:-0}" = 0

finish
