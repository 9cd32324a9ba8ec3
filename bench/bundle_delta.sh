#!/usr/bin/env bash
# Delta size of a fine-tune: a GGUF-like file of ~200 MiB of F32 tensors,
# then the same file with about 10% of the tensor bytes rewritten (whole
# tensors), both bundled; `flotilla bundle diff` says how much a device that
# holds the first must fetch. Targets: <= 15% moved (issue), <= 1.02x the
# changed bytes (DESIGN). Also shows plain CDC (--no-tensor-cuts) for contrast.
# usage: bench/bundle_delta.sh [BUILD_DIR]   (default build/dev; BUNDLE_BENCH_MIB=200)
set -euo pipefail
BUILD=${1:-${BUILD_DIR:-build/dev}}
MIB=${BUNDLE_BENCH_MIB:-200}
FL=$BUILD/controller/cli/flotilla
TOOL=$BUILD/bench/bundle_bench_tool
for b in "$FL" "$TOOL"; do
	[[ -x $b ]] || { echo "bundle_delta: $b not built" >&2; exit 1; }
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-bundle-delta.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

"$TOOL" trust "$tmp"
mkdir "$tmp/v1" "$tmp/v2"
"$TOOL" gguf "$tmp/v1/model.gguf" "$MIB" 1 >/dev/null
info=$("$TOOL" gguf "$tmp/v2/model.gguf" "$MIB" 1 2)
read -r _ tensors _ changed_tensors _ total_bytes _ changed_bytes <<<"$info"

frac() { "$FL" bundle diff "$1" "$2" --json | sed -n 's/.*"fetch_bytes":\([0-9]*\).*"total_bytes":\([0-9]*\).*"fraction":\([0-9.]*\).*/\1 \2 \3/p'; }
for mode in tensor plain; do
	extra=()
	[[ $mode == plain ]] && extra=(--no-tensor-cuts)
	for v in 1 2; do
		"$FL" bundle create --name bench --version "$v" --sequence "$v" "${extra[@]}" \
			--key "$tmp/release.pem" -o "$tmp/$mode-v$v.tar" "$tmp/v$v/model.gguf" >/dev/null
	done
	read -r fetch total fraction <<<"$(frac "$tmp/$mode-v1.tar" "$tmp/$mode-v2.tar")"
	awk -v m="$mode" -v f="$fetch" -v t="$total" -v c="$changed_bytes" 'BEGIN {
		printf "%-6s chunking: fetch %d of %d bytes = %.2f%% moved, %.3fx the changed bytes\n",
		       m, f, t, 100 * f / t, f / c }'
done
awk -v n="$tensors" -v k="$changed_tensors" -v t="$total_bytes" -v c="$changed_bytes" 'BEGIN {
	printf "model: %d tensors, %d rewritten: %d of %d tensor bytes changed (%.2f%%)\n",
	       n, k, c, t, 100 * c / t
	printf "targets: <= 15%% moved, <= 1.02x the changed bytes (tensor-aware)\n" }'
