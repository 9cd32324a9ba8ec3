#!/usr/bin/env bash
# Stop the cluster started by start.sh DIR and remove DIR.
set -uo pipefail
dir=${1:?usage: stop.sh DIR}
real=$(readlink -f "$dir") # start.sh may have put the cluster in /tmp
cd /
if [ -f "$dir/data/postmaster.pid" ]; then
  bin=${FL_PG_BIN:-}
  [ -n "$bin" ] || for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    [ -x "$d/pg_ctl" ] && { bin=$d; break; }
  done
  as=()
  [ "$(id -u)" -eq 0 ] && as=(runuser -u postgres --)
  "${as[@]}" "$bin/pg_ctl" -D "$real/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
    "${as[@]}" "$bin/pg_ctl" -D "$real/data" -m immediate -w stop >/dev/null 2>&1
fi
rm -rf "$real" "$dir"
