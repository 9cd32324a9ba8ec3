#!/usr/bin/env bash
# The operator's CLI end to end: every key, keyring and bundle command, the
# threshold of roots, and that every error is one clear line and a non-zero
# exit. The signing/verification rules themselves are unit-tested in
# tests/unit/ota; this checks the commands a person types.
#
#   cli.sh FLOTILLA MKMODEL
set -uo pipefail
FLOTILLA=$1 MKMODEL=$2
. "$(dirname "$0")/lib.sh"
command -v jq >/dev/null || { echo "FAIL: jq not installed"; exit 1; }
mk_tmp cli
cd "$tmp"
F=$FLOTILLA

# fails_cleanly LABEL PATTERN CMD...: non-zero exit, exactly one stderr line
# starting "flotilla: " and containing PATTERN, nothing on stdout.
fails_cleanly() {
  local label=$1 pat=$2; shift 2
  local out err rc
  out=$("$@" 2>err.txt); rc=$?
  err=$(cat err.txt)
  if [ $rc -eq 0 ]; then bad "$label: exit 0"; return; fi
  if [ -n "$out" ]; then bad "$label: printed on stdout: $out"; return; fi
  if [ "$(wc -l <err.txt)" -ne 1 ]; then bad "$label: stderr not one line: $err"; return; fi
  if [[ $err != "flotilla: "* ]] || ! grep -q -- "$pat" <<<"$err"; then bad "$label: '$err' lacks '$pat'"; return; fi
  ok "$label ($err)"
}

mkdir -p keys trust
id=$($F key generate keys/root1.pem)
check "key generate prints a 64-hex keyid" grep -Eqx '[0-9a-f]{64}' <<<"$id"
check "private key is mode 0600" [ "$(stat -c %a keys/root1.pem)" = 600 ]
check "public half written beside it" [ -s keys/root1.pub.pem ]
check "key id of private and public agree" [ "$($F key id keys/root1.pem)" = "$($F key id keys/root1.pub.pem)" ]
check "key id equals the generate output" [ "$($F key id keys/root1.pem)" = "$id" ]
fails_cleanly "key generate refuses to overwrite" "exists" $F key generate keys/root1.pem
$F key generate keys/root2.pem >/dev/null
$F key generate keys/root3.pem >/dev/null
$F key generate keys/release.pem >/dev/null
$F key generate keys/other.pem >/dev/null

# A 2-of-3 keyring.
check "keyring create" $F keyring create --version 1 --expires-days 30 --threshold 2 \
  --key keys/release.pub.pem:tiny,small --root keys/root1.pub.pem --root keys/root2.pub.pem \
  --root keys/root3.pub.pem -o kr.json
check "keyring sign (root 1)" $F keyring sign kr.json --key keys/root1.pem -o kr1.dsse.json
roots=(--root keys/root1.pub.pem --root keys/root2.pub.pem --root keys/root3.pub.pem)
fails_cleanly "one of two signatures: below threshold" "root signatures" \
  $F keyring verify kr1.dsse.json "${roots[@]}" --threshold 2
check "keyring sign (root 3) adds a second signature" $F keyring sign kr1.dsse.json --key keys/root3.pem -o kr2.dsse.json
check "two of three roots verify" $F keyring verify kr2.dsse.json "${roots[@]}" --threshold 2
fails_cleanly "the same root cannot sign twice" "" $F keyring sign kr1.dsse.json --key keys/root1.pem -o dup.dsse.json
check "no output file after the refused signature" [ ! -e dup.dsse.json ]
fails_cleanly "keyring verify: bad threshold value" "threshold" $F keyring verify kr2.dsse.json "${roots[@]}" --threshold x
fails_cleanly "keyring create: missing version" "version" $F keyring create --expires-days 1 --threshold 1 --key keys/release.pub.pem:tiny -o x.json

# Bundles.
mk_model m/model.gguf 1
echo '{"labels": ["ok"]}' >m/labels.json
cp keys/root1.pub.pem trust/r1.pem; cp keys/root2.pub.pem trust/r2.pem; cp keys/root3.pub.pem trust/r3.pem
echo 2 >trust/threshold
cp kr2.dsse.json trust/keyring.dsse.json
check "bundle create" $F bundle create --name tiny --version 1.0 --sequence 5 --key keys/release.pem \
  --arch x86_64,aarch64 --min-ram-mb 64 -o b1.tar m/model.gguf m/labels.json
check "bundle verify with the trust dir" $F bundle verify b1.tar --trust trust
js=$($F bundle inspect b1.tar --json)
check "inspect --json: name, sequence, two files" \
  [ "$(jq -r '[.name // .manifest.name, (.sequence // .manifest.sequence), ((.files // .manifest.files) | length)] | join(" ")' <<<"$js")" = "tiny 5 2" ]
check "inspect text names the signer" bash -c "$F bundle inspect b1.tar | grep -q '$($F key id keys/release.pem)'"
fails_cleanly "bundle verify: replay below --min-sequence" "replay" $F bundle verify b1.tar --trust trust --min-sequence 6
fails_cleanly "bundle verify: expired at --now" "expired" $F bundle verify b1.tar --trust trust --now 2099-01-01T00:00:00Z
$F bundle create --name nope --version 1.0 --sequence 1 --key keys/release.pem -o b2.tar m/model.gguf >/dev/null
fails_cleanly "bundle verify: model not delegated" "not delegated" $F bundle verify b2.tar --trust trust
$F bundle create --name tiny --version 1.0 --sequence 1 --key keys/other.pem -o b3.tar m/model.gguf >/dev/null
fails_cleanly "bundle verify: unknown signer" "unknown key" $F bundle verify b3.tar --trust trust
check "bundle sign adds the release key's signature" $F bundle sign b3.tar --key keys/release.pem -o b4.tar
check "re-signed bundle verifies" $F bundle verify b4.tar --trust trust
mkdir -p out
check "verify --extract writes the files" $F bundle verify b1.tar --trust trust --extract out
check "extracted files are the originals" cmp -s out/model.gguf m/model.gguf
head -c 4096 b1.tar >trunc.tar
fails_cleanly "bundle verify: truncated" "missing\\|archive" $F bundle verify trunc.tar --trust trust
fails_cleanly "bundle verify: missing file" "No such file" $F bundle verify nothere.tar --trust trust
fails_cleanly "bundle create: unsafe name" "name" $F bundle create --name ../x --version 1 --sequence 1 --key keys/release.pem -o x.tar m/model.gguf
fails_cleanly "bundle create: no key" "key" $F bundle create --name t --version 1 --sequence 1 -o x.tar m/model.gguf
check "failed creates leave no output" [ ! -e x.tar ]

# diff: the same bundle moves nothing; a fine-tuned one moves a little.
d=$($F bundle diff b1.tar b1.tar --json)
check "diff of identical bundles: 0 bytes" [ "$(jq -r .fetch_bytes <<<"$d")" = 0 ]
mk_model m2/model.gguf 2
$F bundle create --name tiny --version 2 --sequence 6 --key keys/release.pem -o c1.tar m/model.gguf >/dev/null
$F bundle create --name tiny --version 3 --sequence 7 --key keys/release.pem -o c2.tar m2/model.gguf >/dev/null
d=$($F bundle diff c1.tar c2.tar --json)
check "diff of unrelated models: nearly everything" \
  bash -c "[ \$(jq -r '.fetch_bytes * 100 / .total_bytes | floor' <<<'$d') -ge 90 ]"
check "diff text form" bash -c "$F bundle diff c1.tar c2.tar | grep -q '^fetch [0-9]* of [0-9]* bytes'"

fails_cleanly "unknown command" "unknown command" $F frobnicate
finish
