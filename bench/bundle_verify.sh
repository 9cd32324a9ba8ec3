#!/usr/bin/env bash
# Bundle verification speed: `flotilla bundle verify` of a bundle with a 1 GiB
# payload against `sha256sum` of the same payload, in the same run, both from
# a warm page cache; best of 3 each. Target: ratio <= 1.2.
# usage: bench/bundle_verify.sh [BUILD_DIR]   (default build/dev; BUNDLE_BENCH_MIB=1024)
set -euo pipefail
BUILD=${1:-${BUILD_DIR:-build/dev}}
MIB=${BUNDLE_BENCH_MIB:-1024}
FL=$BUILD/controller/cli/flotilla
TOOL=$BUILD/bench/bundle_bench_tool
for b in "$FL" "$TOOL"; do
	[[ -x $b ]] || { echo "bundle_verify: $b not built" >&2; exit 1; }
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-bundle-verify.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

"$TOOL" trust "$tmp"
"$TOOL" random "$tmp/payload.bin" "$MIB"
start=$(date +%s.%N)
"$FL" bundle create --name bench --version 1 --sequence 1 --key "$tmp/release.pem" \
	-o "$tmp/bundle.tar" "$tmp/payload.bin" >/dev/null
end=$(date +%s.%N)
create_s=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
cat "$tmp/payload.bin" "$tmp/bundle.tar" >/dev/null # warm the cache for both

best() { # best wall time of 3 runs of "$@", seconds
	local best=999999 s e d
	for _ in 1 2 3; do
		s=$(date +%s.%N)
		"$@" >/dev/null
		e=$(date +%s.%N)
		d=$(awk -v a="$s" -v b="$e" 'BEGIN { printf "%.4f", b - a }')
		best=$(awk -v a="$best" -v b="$d" 'BEGIN { print (b < a) ? b : a }')
	done
	echo "$best"
}
sha_s=$(best sha256sum "$tmp/payload.bin")
ver_s=$(best "$FL" bundle verify "$tmp/bundle.tar" --trust "$tmp/trust")
awk -v mib="$MIB" -v c="$create_s" -v s="$sha_s" -v v="$ver_s" 'BEGIN {
	printf "payload:                 %d MiB\n", mib
	printf "bundle create:           %.3f s (%.0f MiB/s; chunk + hash, then hash again while writing the tar)\n", c, mib / c
	printf "sha256sum payload:       %.3f s (%.0f MiB/s)\n", s, mib / s
	printf "flotilla bundle verify:  %.3f s (%.0f MiB/s)\n", v, mib / v
	printf "ratio verify/sha256sum:  %.2f (target <= 1.2)\n", v / s
}'
