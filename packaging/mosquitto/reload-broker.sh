#!/usr/bin/env bash
# Apply a new CRL (`flotilla pki revoke` / `flotilla pki crl`) or new
# controller certificates to a broker started with start-broker.sh DIR:
# copy DIR/ca.crl into DIR/broker/tls/, regenerate DIR/broker/acl
# (gen-acl.sh) and send SIGHUP.
#
#   reload-broker.sh DIR             SIGHUP: new handshakes see the new CRL and ACL
#   reload-broker.sh DIR --restart   stop + start on the same port: also drops
#                                    connections that are already open
#
# mosquitto 2.0.11 re-reads crlfile and acl_file on SIGHUP (measured by
# tests/integration/pki_revoke.sh), but a client that is already connected
# stays connected: to cut off a revoked device at once use --restart (with
# persistence on, other clients' sessions and queued messages survive it).
# A CRL that appears for the first time needs --restart (the crlfile line
# is only written at start).
# Exit 0 on success, 1 on failure, 2 usage.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "reload-broker: $*" >&2; exit 1; }
restart=0
case $# in
  1) ;;
  2) [ "$2" = --restart ] || { echo "usage: reload-broker.sh DIR [--restart]" >&2; exit 2; }; restart=1 ;;
  *) echo "usage: reload-broker.sh DIR [--restart]" >&2; exit 2 ;;
esac
dir=$(cd "$1" 2>/dev/null && pwd) || die "$1: no such directory"
run=$dir/broker
conf=$run/mosquitto.conf
[ -r "$conf" ] || die "no broker configuration in $run (start-broker.sh first)"
# The source ACL start-broker.sh used (older runs: the shipped one).
acl_src=$run/acl.src
[ -r "$acl_src" ] || acl_src=$here/acl
pid=$(cat "$run/mosquitto.pid" 2>/dev/null || true)
case $pid in ''|*[!0-9]*) die "no broker running for $dir" ;; esac
[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mosquitto ] || die "no broker running for $dir (pid $pid)"

if [ "$restart" = 1 ]; then
  port=$(awk '$1 == "listener" { print $2; exit }' "$conf")
  bind=$(awk '$1 == "listener" { print $3; exit }' "$conf")
  [ -n "$port" ] || die "no listener in $conf"
  "$here/stop-broker.sh" "$dir" || die "could not stop the broker"
  FL_BROKER_ACL=$acl_src FL_BROKER_BIND=${bind:-127.0.0.1} exec "$here/start-broker.sh" "$dir" "$port"
fi

if [ -e "$dir/ca.crl" ]; then
  grep -q '^crlfile ' "$conf" ||
    die "the running broker was started without a CRL: use reload-broker.sh $dir --restart"
  install -m 0644 "$dir/ca.crl" "$run/tls/ca.crl.new"
  mv -f "$run/tls/ca.crl.new" "$run/tls/ca.crl"
fi
FL_BROKER_ACL=$acl_src "$here/gen-acl.sh" "$dir" >"$run/acl.new" || die "could not make the ACL"
chmod 0644 "$run/acl.new"
mv -f "$run/acl.new" "$run/acl"
if [ "$(id -u)" = 0 ]; then
  owner=$(stat -c %U "$run")
  chown "$owner:" "$run/acl" "$run/tls/ca.crl" 2>/dev/null || chown "$owner:" "$run/acl"
fi
kill -HUP "$pid"
echo "reload-broker: SIGHUP sent to mosquitto pid $pid"
