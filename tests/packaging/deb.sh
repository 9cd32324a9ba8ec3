#!/usr/bin/env bash
# The Debian packages, end to end on this machine (needs root; no running
# systemd needed):
#
#   deb.sh BUILD_DIR
#
# 1. cpack builds flotilla-agent, flotilla-controller and flotilla-cli from
#    BUILD_DIR (configured with cmake/packaging.cmake, programs built);
# 2. lintian: every tag is printed, errors and warnings fail;
# 3. dpkg -i: programs, units, conffiles, the flotilla system user and the
#    multi-user.target.wants symlinks are in place, and the installed agent
#    runs as that user with the packaged configuration; the installed
#    controller starts as the unit's User= with the shipped controller.conf,
#    answers /healthz, refuses the API (no tokens shipped) and exits 0 on
#    SIGTERM;
# 4. dpkg -r keeps conffiles and masks nothing it should not; dpkg -P removes
#    conffiles, state, symlinks and d-s-h state, and keeps the system user
#    (Debian's advice for system accounts).
# Everything it installed is purged on exit, also on failure. Exit 77
# (skipped) when not root, without dpkg/cpack, or when Flotilla is already
# installed here (the test never touches an installation it did not make).
set -euo pipefail
BUILD=$(cd "${1:?usage: deb.sh BUILD_DIR}" && pwd)
PKGS=(flotilla-agent flotilla-controller flotilla-cli)
WANTS=/etc/systemd/system/multi-user.target.wants

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root (dpkg -i)"
command -v dpkg >/dev/null && command -v cpack >/dev/null || skip "needs dpkg and cpack"
[ -f "$BUILD/CPackConfig.cmake" ] || { echo "FAIL: $BUILD/CPackConfig.cmake missing: is cmake/packaging.cmake included?"; exit 1; }
for p in "${PKGS[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'installed\|config-files'; then
    skip "$p is installed on this machine; purge it first (dpkg -P ${PKGS[*]})"
  fi
done
for d in /etc/flotilla /var/lib/flotilla /var/lib/flotilla-controller; do
  [ ! -e "$d" ] || skip "$d exists on this machine: not ours to purge"
done
USER_EXISTED=0
getent passwd flotilla >/dev/null && USER_EXISTED=1

TMP=$(mktemp -d "${TMPDIR:-/tmp}/fl-deb.XXXXXX")
INSTALLED=0
# dpkg allows one frontend at a time: wait (bounded) for apt/dpkg elsewhere.
dpkg_run() {
  local i out
  for i in $(seq 1 60); do
    if out=$(timeout 120 dpkg "$@" 2>&1); then
      printf '%s\n' "$out" | grep -v '^(Reading database' || true
      return 0
    fi
    if printf '%s\n' "$out" | grep -q 'lock'; then sleep 2; continue; fi
    printf '%s\n' "$out"
    return 1
  done
  echo "dpkg: still locked after 120 s"
  return 1
}
cleanup() {
  local rc=$?
  if [ "$INSTALLED" = 1 ]; then
    dpkg_run --purge "${PKGS[@]}" >/dev/null 2>&1 || true
  fi
  if [ "$USER_EXISTED" = 0 ] && getent passwd flotilla >/dev/null; then
    userdel flotilla >/dev/null 2>&1 || true
    getent group flotilla >/dev/null && groupdel flotilla >/dev/null 2>&1 || true
  fi
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail=0
check() { # check DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi
}

echo "== cpack"
t0=$(date +%s)
timeout 300 cpack -G DEB --config "$BUILD/CPackConfig.cmake" -B "$TMP/out" > "$TMP/cpack.log" 2>&1 ||
  { cat "$TMP/cpack.log"; echo "FAIL: cpack"; exit 1; }
DEBS=()
for p in "${PKGS[@]}"; do
  f=$(ls "$TMP/out/${p}_"*.deb 2>/dev/null | head -1)
  [ -n "$f" ] || { echo "FAIL: no $p .deb"; exit 1; }
  DEBS+=("$f")
  echo "$(basename "$f"): $(stat -c %s "$f") bytes"
  echo "  Depends: $(dpkg-deb -f "$f" Depends)"
done
echo "cpack: $(( $(date +%s) - t0 )) s"
check "agent conffiles list agent.conf" \
  sh -c "dpkg-deb -I '${DEBS[0]}' conffiles | grep -qx /etc/flotilla/agent.conf"
check "agent depends on adduser and its libraries (dpkg-shlibdeps)" \
  sh -c "dpkg-deb -f '${DEBS[0]}' Depends | grep -q 'adduser.*libc6'"

echo "== lintian"
if command -v lintian >/dev/null; then
  # Info and pedantic tags are printed for the record; errors and warnings fail.
  lout=$(timeout 300 lintian -I --pedantic "${DEBS[@]}" 2>&1 | grep -v 'root privileges') || true
  printf '%s\n' "$lout" | sed 's/^/  /'
  if printf '%s\n' "$lout" | grep -q '^[EW]:'; then
    echo "FAIL: lintian errors or warnings"; fail=1
  else
    echo "ok: lintian: no errors or warnings"
  fi
else
  echo "WARN: lintian not installed (apt-get install lintian): not checked"
fi

echo "== dpkg -i"
INSTALLED=1
dpkg_run -i "${DEBS[@]}" || { echo "FAIL: dpkg -i"; exit 1; }
for p in "${PKGS[@]}"; do
  check "$p installed" sh -c "dpkg-query -W -f='\${Status}' $p | grep -q 'install ok installed'"
done
for f in /usr/bin/flotilla-agent /usr/bin/flotilla-controller /usr/bin/flotilla; do
  check "$f executable" test -x "$f"
done
for f in /lib/systemd/system/flotilla-agent.service /lib/systemd/system/flotilla-controller.service \
         /etc/flotilla/agent.conf /etc/flotilla/controller.conf \
         /usr/lib/sysusers.d/flotilla-agent.conf /usr/share/man/man8/flotilla-agent.8.gz \
         /usr/share/doc/flotilla-agent/copyright; do
  check "$f present" test -f "$f"
done
check "/etc/flotilla/trust is a directory" test -d /etc/flotilla/trust
for c in agent controller; do
  check "conffile /etc/flotilla/$c.conf registered" \
    sh -c "dpkg-query -W -f='\${Conffiles}\n' flotilla-$c | grep -q '^ */etc/flotilla/$c.conf [0-9a-f]\{32\}'"
done
check "system user flotilla (uid < 1000, nologin)" \
  sh -c 'e=$(getent passwd flotilla) && u=$(echo "$e" | cut -d: -f3) && [ "$u" -lt 1000 ] && echo "$e" | grep -q "nologin$"'
check "group flotilla" sh -c 'getent group flotilla >/dev/null'
for u in flotilla-agent flotilla-controller; do
  check "$u.service enabled (wants symlink)" \
    sh -c "[ \"\$(readlink $WANTS/$u.service)\" = /lib/systemd/system/$u.service ]"
done
# The installed agent, as the service user, with the packaged config.
mkdir "$TMP/state" && chown flotilla:flotilla "$TMP/state" && chmod 755 "$TMP"
check "installed agent runs as flotilla with /etc/flotilla/agent.conf" \
  sh -c "timeout 30 runuser -u flotilla -- /usr/bin/flotilla-agent --state-dir '$TMP/state' status | grep -q 'no models installed'"
check "installed controller and cli run" \
  sh -c 'timeout 10 /usr/bin/flotilla-controller --help >/dev/null && timeout 10 /usr/bin/flotilla --help >/dev/null'
# The installed controller as its unit runs it (User=, StateDirectory=, the
# shipped conffile), without systemd: the conffile alone must let it start.
ctl_unit=/lib/systemd/system/flotilla-controller.service
ctl_user=$(sed -n 's/^User=//p' "$ctl_unit")
ctl_state=/var/lib/$(sed -n 's/^StateDirectory=//p' "$ctl_unit")
check "controller.conf data_dir is the unit's StateDirectory" \
  sh -c "grep -qx 'data_dir = $ctl_state' /etc/flotilla/controller.conf"
install -d -o "$ctl_user" -g "$ctl_user" -m 0700 "$ctl_state"   # what StateDirectory= does
ctl_conf=/etc/flotilla/controller.conf
if ss -Hltn 'sport = :8080' 2>/dev/null | grep -q .; then
  # Someone else has the shipped port here: same file, any free port.
  echo "note: port 8080 is busy on this machine: the shipped controller.conf with port = 0"
  sed 's/^port = .*/port = 0/' /etc/flotilla/controller.conf > "$TMP/controller.conf"
  chmod 644 "$TMP/controller.conf"
  ctl_conf=$TMP/controller.conf
fi
# setpriv execs the program (runuser would stay between as its parent and
# turn our SIGTERM into its own exit status).
setpriv --reuid="$ctl_user" --regid="$ctl_user" --init-groups -- /usr/bin/flotilla-controller --config "$ctl_conf" \
  --port-file "$TMP/state/ctl.port" > "$TMP/ctl.log" 2>&1 &
ctl_pid=$!
for _ in $(seq 1 100); do
  [ -s "$TMP/state/ctl.port" ] || ! kill -0 "$ctl_pid" 2>/dev/null && break
  sleep 0.1
done
ctl_port=$(cat "$TMP/state/ctl.port" 2>/dev/null || echo 0)
check "installed controller starts as $ctl_user with the shipped controller.conf" \
  sh -c "[ '$ctl_port' != 0 ] && curl -sf -m 5 http://127.0.0.1:$ctl_port/healthz >/dev/null"
check "controller process runs as $ctl_user" \
  sh -c "[ \"\$(ps -o user= -p $ctl_pid)\" = '$ctl_user' ]"
check "shipped controller.conf (no tokens) refuses the API" \
  sh -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 5 http://127.0.0.1:$ctl_port/api/v1/devices)\" = 401 ]"
check "controller store created in $ctl_state, owned by $ctl_user" \
  sh -c "[ \"\$(stat -c %U '$ctl_state/controller.db')\" = '$ctl_user' ]"
kill -TERM "$ctl_pid" 2>/dev/null || true
ctl_rc=0
for _ in $(seq 1 100); do kill -0 "$ctl_pid" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$ctl_pid" 2>/dev/null || true
wait "$ctl_pid" || ctl_rc=$?
check "installed controller exits 0 on SIGTERM" test "$ctl_rc" -eq 0
[ "$fail" -eq 0 ] || sed 's/^/  controller: /' "$TMP/ctl.log"
# Reinstall (upgrade path: postinst configure with a previous version) must be quiet and keep the link.
dpkg_run -i "${DEBS[0]}" >/dev/null || { echo "FAIL: dpkg -i again"; fail=1; }
check "agent still enabled after reinstall" test -L "$WANTS/flotilla-agent.service"

echo "== dpkg -r, then dpkg -P"
# State the service would have made (StateDirectory=), to be removed on purge.
install -d -o flotilla -g flotilla -m 0700 /var/lib/flotilla/models
echo model > /var/lib/flotilla/models/x && chown flotilla: /var/lib/flotilla/models/x
dpkg_run -r "${PKGS[@]}" || { echo "FAIL: dpkg -r"; fail=1; }
check "programs gone after remove" sh -c '! test -e /usr/bin/flotilla-agent && ! test -e /usr/bin/flotilla'
check "conffiles kept after remove" test -f /etc/flotilla/agent.conf
check "state kept after remove" test -f /var/lib/flotilla/models/x
check "controller state kept after remove" test -f /var/lib/flotilla-controller/controller.db
dpkg_run -P "${PKGS[@]}" || { echo "FAIL: dpkg -P"; fail=1; }
INSTALLED=0
for p in "${PKGS[@]}"; do
  check "$p purged" sh -c "! dpkg-query -W -f='\${Status}' $p 2>/dev/null | grep -q installed"
done
check "/etc/flotilla gone" sh -c '! test -e /etc/flotilla'
check "/var/lib/flotilla gone" sh -c '! test -e /var/lib/flotilla'
check "/var/lib/flotilla-controller gone" sh -c '! test -e /var/lib/flotilla-controller'
check "units gone" sh -c '! ls /lib/systemd/system/flotilla-* >/dev/null 2>&1'
check "no symlink or mask left in /etc/systemd/system" \
  sh -c '! find /etc/systemd/system -name "flotilla-*" | grep -q .'
check "no deb-systemd-helper state left" \
  sh -c '! find /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked -name "flotilla-*" 2>/dev/null | grep -q .'
check "system user kept after purge (Debian policy for system accounts)" \
  sh -c 'getent passwd flotilla >/dev/null'

[ "$fail" -eq 0 ] && echo "PASS" || exit 1
