#!/usr/bin/env bash
# Install the Debian bookworm packages Flotilla needs to build, test and run
# its demo: only those missing, so a second run is a no-op.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
  libpaho-mqtt-dev libssl-dev libmbedtls-dev libarchive-dev libsqlite3-dev
  libcmocka-dev libcjson-dev libmicrohttpd-dev libcurl4-openssl-dev zlib1g-dev
  mosquitto mosquitto-clients sqlite3 curl git ca-certificates xxd jq
  lintian systemd libxgboost-dev libmosquitto-dev chromium fonts-dejavu-core
  procps python3 iproute2 libpq-dev postgresql
  iptables faketime libfaketime
)
# Tools that may come from elsewhere (nodejs from NodeSource ships npm):
# install the Debian package only when the command is missing.
CMDS=(npm:npm)

missing=()
arch=$(dpkg --print-architecture)
for p in "${PKGS[@]}"; do
  # One line per installed architecture (multiarch: amd64 and arm64 -dev
  # packages side by side); the native or an arch-independent one counts.
  if ! dpkg-query -W -f='${Status} ${Architecture}\n' "$p" 2>/dev/null |
       grep -qE "^install ok installed ($arch|all)\$"; then
    missing+=("$p")
  fi
done
for c in "${CMDS[@]}"; do
  command -v "${c%%:*}" >/dev/null 2>&1 || missing+=("${c#*:}")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
# A lagging foreign-architecture index (arm64 lists mid-sync) must not stop
# an install that only needs native packages.
$SUDO apt-get update -qq || echo "deps: apt-get update reported errors; trying the install anyway"
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian mosquitto package enables a system broker on port 1883; our
# tests and demo start their own on other ports, so leave it alone.
echo "deps: done"
