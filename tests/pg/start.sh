#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the tests: DIR/data, listening on
# 127.0.0.1 on a free port (and a socket in DIR), trust auth for user
# "flotilla", fsync off. Writes the libpq conninfo to DIR/dsn. Run as root,
# the server runs as "postgres" (initdb refuses root). Stop with stop.sh DIR.
# A missing PostgreSQL is a failure with a clear message, not a skip.
set -euo pipefail
dir=${1:?usage: start.sh DIR}
bin=${FL_PG_BIN:-}
if [ -z "$bin" ]; then
  for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { bin=$d; break; }
  done
fi
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ] || [ ! -x "$bin/pg_ctl" ]; then
  echo "FAIL: PostgreSQL server not installed (no initdb/pg_ctl under /usr/lib/postgresql/*/bin);" \
       "run packaging/deps.sh (Debian package 'postgresql')" >&2
  exit 1
fi
# A leftover cluster of an interrupted run: stop it and start afresh.
[ -f "$dir/data/postmaster.pid" ] && "$(dirname "$0")/stop.sh" "$dir" || true
[ -L "$dir" ] && rm -rf "$(readlink -f "$dir")"
rm -rf "$dir"
mkdir -p "$dir"
cd / # runuser keeps the cwd, which "postgres" may not be allowed to enter
real=$dir
as=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "FAIL: no 'postgres' user to run the server as" >&2; exit 1; }
  chown postgres: "$dir"
  as=(runuser -u postgres --)
  # A checkout under a 0700 directory (mktemp -d): "postgres" cannot reach
  # DIR, so the cluster lives in /tmp and DIR is a link to it.
  if ! runuser -u postgres -- test -x "$dir"; then
    rmdir "$dir"
    real=$(mktemp -d /tmp/flotilla-pg.XXXXXX)
    chmod 0755 "$real"
    chown postgres: "$real"
    ln -s "$real" "$dir"
  fi
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${as[@]}" "$bin/initdb" -D "$real/data" -U flotilla --auth=trust -E UTF8 --no-sync \
  >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; echo "FAIL: initdb" >&2; exit 1; }
"${as[@]}" "$bin/pg_ctl" -D "$real/data" -l "$real/server.log" -w -t 30 \
  -o "-p $port -k $real -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
  start >/dev/null || { cat "$dir/server.log" >&2; echo "FAIL: pg_ctl start" >&2; exit 1; }
echo "host=127.0.0.1 port=$port user=flotilla dbname=postgres connect_timeout=10" >"$dir/dsn"
chmod 0644 "$dir/dsn"
echo "postgresql started: $(cat "$dir/dsn")"
