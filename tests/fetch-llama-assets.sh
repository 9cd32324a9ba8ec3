#!/usr/bin/env bash
# tests/fetch-llama-assets.sh - fetch the llama.cpp source tree (with its
# models/ggml-vocab-*.gguf tokenizer test vectors) into a cache OUTSIDE the repo.
#
# The llama.cpp source is taken from the npm package node-llama-cpp, which
# ships it as a git bundle (llama/gitRelease.bundle). The package is only
# downloaded with `npm pack` and unpacked with tar: none of its install
# scripts are run.
#
# Usage:  tests/fetch-llama-assets.sh            # prints the source path
# Env:    FLOTILLA_CACHE        cache root (default $HOME/.cache/flotilla)
#         FLOTILLA_LLAMA_NPM    npm package version (default below; changing
#                               it disables the commit pin check unless
#                               FLOTILLA_LLAMA_COMMIT is also set)
#
# On success: prints the absolute path of the llama.cpp source on stdout, exit 0.
# On failure: prints ONE line "fetch-llama-assets: error: ..." on stderr, exit 1.
# Idempotent: a second run finds the stamp file and does nothing but print.
# Works non-interactively (CI=true, no terminal).
set -u -o pipefail

DEFAULT_VERSION=3.21.1
# sha1 of node-llama-cpp-3.21.1.tgz as published (npm view ... dist.shasum)
DEFAULT_SHA1=f7579ace3d45c8e93856cebbd8671fa43c2eef1b
# commit of the llama.cpp tree inside that package's bundle
DEFAULT_COMMIT=80fb11ac73e66d89eae2c6a91d8a77428fa733ed

VERSION=${FLOTILLA_LLAMA_NPM:-$DEFAULT_VERSION}
if [ "$VERSION" = "$DEFAULT_VERSION" ]; then
    WANT_SHA1=$DEFAULT_SHA1
    WANT_COMMIT=${FLOTILLA_LLAMA_COMMIT:-$DEFAULT_COMMIT}
else
    WANT_SHA1=
    WANT_COMMIT=${FLOTILLA_LLAMA_COMMIT:-}
fi

CACHE=${FLOTILLA_CACHE:-${HOME:-/root}/.cache/flotilla}
SRC=$CACHE/llama.cpp-src
STAMP=$SRC/.flotilla-fetched
NPMDIR=$CACHE/npm

die() {
    echo "fetch-llama-assets: error: $*" >&2
    exit 1
}

# Fast path: already fetched with the same package version.
if [ -f "$STAMP" ] && grep -qx "npm=node-llama-cpp@$VERSION" "$STAMP" 2>/dev/null; then
    echo "$SRC"
    exit 0
fi

command -v npm >/dev/null 2>&1 || die "npm not found (apt-get install npm)"
command -v git >/dev/null 2>&1 || die "git not found"
command -v tar >/dev/null 2>&1 || die "tar not found"

mkdir -p "$CACHE" "$NPMDIR" || die "cannot create cache dir $CACHE"
CACHE=$(cd "$CACHE" && pwd) || die "cannot resolve $CACHE"
SRC=$CACHE/llama.cpp-src
STAMP=$SRC/.flotilla-fetched
NPMDIR=$CACHE/npm

TGZ=$NPMDIR/node-llama-cpp-$VERSION.tgz
WORK=$(mktemp -d "$CACHE/.fetch.XXXXXX") || die "mktemp failed in $CACHE"
trap 'rm -rf "$WORK"' EXIT

if [ ! -s "$TGZ" ]; then
    # npm pack only downloads the tarball; it never runs the package's scripts.
    if ! (cd "$WORK" && CI=true npm pack "node-llama-cpp@$VERSION" \
            --ignore-scripts --loglevel=error --fetch-retries=1 \
            --fetch-timeout=60000 --pack-destination "$WORK" \
            </dev/null >"$WORK/npm.out" 2>"$WORK/npm.err"); then
        msg=$(grep -m1 -i 'npm error\|ERR!\|code E' "$WORK/npm.err" | tr -s ' ')
        die "npm pack node-llama-cpp@$VERSION failed (registry unreachable?): ${msg:-see npm logs}"
    fi
    [ -s "$WORK/node-llama-cpp-$VERSION.tgz" ] || die "npm pack produced no tarball"
    if [ -n "$WANT_SHA1" ]; then
        got=$(sha1sum "$WORK/node-llama-cpp-$VERSION.tgz" | cut -d' ' -f1)
        [ "$got" = "$WANT_SHA1" ] || die "tarball sha1 $got != pinned $WANT_SHA1"
    fi
    mv -f "$WORK/node-llama-cpp-$VERSION.tgz" "$TGZ" || die "cannot store $TGZ"
fi

tar -xzf "$TGZ" -C "$WORK" package/llama/gitRelease.bundle package/llama/llama.cpp.info.json \
    2>"$WORK/tar.err" || die "tar: $(head -n1 "$WORK/tar.err")"

git -c advice.detachedHead=false clone -q "$WORK/package/llama/gitRelease.bundle" "$WORK/src" \
    </dev/null >"$WORK/git.err" 2>&1 || die "git clone of bundle failed: $(head -n1 "$WORK/git.err")"

commit=$(git -C "$WORK/src" rev-parse HEAD 2>/dev/null) || die "cannot read bundle HEAD"
if [ -n "$WANT_COMMIT" ] && [ "$commit" != "$WANT_COMMIT" ]; then
    die "bundle commit $commit != pinned $WANT_COMMIT"
fi
[ -f "$WORK/src/models/ggml-vocab-llama-spm.gguf" ] || die "bundle has no models/ggml-vocab-llama-spm.gguf"

tag=$(sed -n 's/.*"tag"[^"]*"\([^"]*\)".*/\1/p' "$WORK/package/llama/llama.cpp.info.json" | head -n1)
{
    echo "npm=node-llama-cpp@$VERSION"
    echo "commit=$commit"
    echo "tag=${tag:-unknown}"
} >"$WORK/src/.flotilla-fetched" || die "cannot write stamp"

# Replace any stale/partial tree atomically-ish (rename within one filesystem).
if [ -e "$SRC" ]; then
    rm -rf "$SRC.old"
    mv "$SRC" "$SRC.old" || die "cannot move old $SRC away"
fi
mv "$WORK/src" "$SRC" || die "cannot move source into $SRC"
rm -rf "$SRC.old"

echo "$SRC"
