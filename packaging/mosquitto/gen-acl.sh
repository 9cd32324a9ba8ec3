#!/usr/bin/env bash
# Print the broker ACL for a `flotilla pki` directory: the shipped ACL (or
# FL_BROKER_ACL) plus one `user` block for every controller certificate in
# DIR whose CN starts with flotilla-controller (controller.crt,
# controller-2.crt, ...; `flotilla pki issue-controller flotilla-controller-N
# --out controller-N`). mosquitto's ACL cannot match a user-name prefix, so
# every controller instance is listed by name; a CN the source ACL already
# names is not repeated. Certificates listed in DIR/revoked.txt are skipped.
#
#   gen-acl.sh DIR > acl
#
# Exit 0 with the ACL on stdout; 1 on error (message on stderr).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -ne 1 ]; then
  echo "usage: gen-acl.sh DIR" >&2
  exit 2
fi
dir=$1
src=${FL_BROKER_ACL:-$here/acl}
[ -r "$src" ] || { echo "gen-acl: ACL file $src missing" >&2; exit 1; }
command -v openssl >/dev/null || { echo "gen-acl: openssl not installed" >&2; exit 1; }

cat "$src"
added=0
seen=
shopt -s nullglob
for crt in "$dir"/*.crt; do
  case $(basename "$crt") in ca.crt) continue ;; esac
  # The CN, and only certificates for TLS clients (not the broker's).
  subj=$(openssl x509 -in "$crt" -noout -subject -nameopt RFC2253 2>/dev/null) || continue
  cn=$(printf '%s\n' "$subj" | sed -n 's/^subject=\(.*,\)\{0,1\}CN=\([^,]*\).*$/\2/p')
  case $cn in flotilla-controller|flotilla-controller-*) ;; *) continue ;; esac
  printf '%s' "$cn" | grep -qE '^[A-Za-z0-9._-]+$' || continue
  openssl x509 -in "$crt" -noout -ext extendedKeyUsage 2>/dev/null | grep -q 'TLS Web Client Authentication' || continue
  if [ -r "$dir/revoked.txt" ]; then
    serial=$(openssl x509 -in "$crt" -noout -serial | sed 's/^serial=//; s/^0*//' | tr 'A-F' 'a-f')
    grep -q "^$serial " "$dir/revoked.txt" && continue
  fi
  cn_re=${cn//./\\.}
  grep -qxE "user[[:space:]]+${cn_re}[[:space:]]*" "$src" && continue
  case " $seen " in *" $cn "*) continue ;; esac
  seen+=" $cn"
  if [ $added = 0 ]; then
    printf '\n# Controller instances found in %s by gen-acl.sh.\n' "$dir"
    added=1
  fi
  printf 'user %s\ntopic readwrite flotilla/v1/#\n' "$cn"
done
