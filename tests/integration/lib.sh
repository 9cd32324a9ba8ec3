# Shared helpers for the shell integration tests (source it).
# Expects: FLOTILLA, AGENT, MKMODEL set to binaries.

fails=0
checks=0
ok() { checks=$((checks + 1)); echo "ok: $*"; }
bad() { checks=$((checks + 1)); fails=$((fails + 1)); echo "FAIL: $*"; }
check() { # check DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}
finish() {
  echo "$((checks - fails)) passed, $fails failed"
  if [ "$fails" -gt 0 ] && [ -n "${tmp:-}" ] && [ -d "$tmp" ]; then
    # the scratch directory may go with the test: show its logs' ends now
    local l
    for l in $(find "$tmp" -maxdepth 2 -name '*.log' -size +0 2>/dev/null | head -n 6); do
      echo "--- last lines of ${l#"$tmp"/}"
      tail -n 15 "$l"
    done
  fi
  [ "$fails" -eq 0 ]
}

# wait_for SECONDS COMMAND...: poll COMMAND every 0.2 s until it succeeds
# (0) or SECONDS of wall time have passed (1).
wait_for() { local end=$((SECONDS + $1)); shift; while [ $SECONDS -lt $end ]; do "$@" && return 0; sleep 0.2; done; return 1; }

# A TCP port for a test's listener on 127.0.0.1: below the kernel's
# ephemeral range (32768-60999 here), where other tests' outgoing
# connections never take one, and not listening now.
free_port() {
  local p _
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 12000))
    ss -Htln "sport = :$p" 2>/dev/null | grep . >/dev/null || { echo "$p"; return 0; }
  done
  echo "$p"
}

# mk_tmp NAME: a fresh directory under FL_TEST_TMPDIR, removed on exit.
mk_tmp() {
  local base=${FL_TEST_TMPDIR:-/tmp}
  mkdir -p "$base"
  tmp=$(mktemp -d "$base/$1.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
}

# mk_trust DIR MODEL...: root + release keys, a root-signed keyring that
# delegates the release key for MODELs; DIR/trust holds what a device gets.
mk_trust() {
  local d=$1; shift
  mkdir -p "$d/keys" "$d/trust"
  "$FLOTILLA" key generate "$d/keys/root.pem" >/dev/null
  "$FLOTILLA" key generate "$d/keys/release.pem" >/dev/null
  local models
  models=$(IFS=,; echo "$*")
  "$FLOTILLA" keyring create --version 1 --expires-days 365 --threshold 1 \
    --key "$d/keys/release.pub.pem:$models" -o "$d/keys/keyring.json" >/dev/null
  "$FLOTILLA" keyring sign "$d/keys/keyring.json" --key "$d/keys/root.pem" \
    -o "$d/trust/keyring.dsse.json" >/dev/null
  cp "$d/keys/root.pub.pem" "$d/trust/root.pem"
}

# mk_model OUT SEED: a tiny llama GGUF (about 150 KiB).
mk_model() {
  mkdir -p "$(dirname "$1")"
  "$MKMODEL" --arch llama --vocab tiny --dim 64 --layers 2 --heads 4 --kv-heads 2 \
    --ffn 128 --ctx 256 --type q8_0 --seed "$2" -o "$1" >/dev/null
}

# mk_bundle OUT KEYDIR NAME VERSION SEQ FILE... (options may precede files)
mk_bundle() {
  local out=$1 keys=$2 name=$3 ver=$4 seq=$5; shift 5
  "$FLOTILLA" bundle create -o "$out" --key "$keys/release.pem" --name "$name" \
    --version "$ver" --sequence "$seq" "$@" >/dev/null
}

# status_field STATE_DIR TRUST_DIR MODEL EXPR: a field of `status --json`.
status_json() {
  "$AGENT" --state-dir "$1" --trust-dir "$2" status --json
}
