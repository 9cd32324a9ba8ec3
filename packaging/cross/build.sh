#!/usr/bin/env bash
# Cross build of Flotilla for another Debian architecture: programs, unit
# tests run under qemu-user, and .debs.
#
#   packaging/cross/build.sh [--mode auto|multiarch|sysroot|chroot] [--no-tests] ARCH
#
# ARCH: arm64 or armhf. Needs root (apt-get, binfmt_misc, chroot) and the
# Debian archive. Three ways, tried in this order by --mode auto (default):
#   multiarch  Debian's cross gcc + the ARCH -dev packages beside the build
#              machine's (dpkg --add-architecture ARCH), cmake with
#              cmake/toolchain-<triplet>.cmake, tests through qemu-user
#              (binfmt_misc lets tests exec ARCH helper programs).
#   sysroot    when the :ARCH packages cannot be installed beside amd64's
#              (Debian's ARCH lists lag the amd64 ones): a bookworm ARCH root
#              made with debootstrap (apt resolves inside one architecture)
#              is used only as the sysroot of the build machine's cross gcc
#              (cmake/toolchain-sysroot.cmake): the compiler runs natively;
#              tests run under qemu-user with the root as its -L prefix; the
#              .debs are made inside the root (dpkg-shlibdeps reads its dpkg
#              database there).
#   chroot     everything inside that root, native gcc under qemu (slow:
#              every compiler process is emulated); the fallback when no
#              cross gcc can be installed.
# Says which one it used, times each phase, and leaves the .debs in
# BUILD/debs (default build/cross-ARCH/debs). Not part of the normal ctest
# run (minutes, and it installs packages); see docs/operations-packaging.md.
# Environment: FL_CROSS_BUILD_DIR (default SRC/build/cross-ARCH),
# FL_CROSS_CHROOT (default /var/tmp/flotilla-chroot-ARCH, kept for reuse),
# FL_CROSS_EXTRA_BINDS (more directories to bind into the chroot, same
# paths, e.g. the targets of symlinks in the tree), FL_CROSS_JOBS (default 2),
# FL_CROSS_MIRROR (default http://deb.debian.org/debian),
# FL_CROSS_TEST_TIMEOUT (seconds per unit test under qemu, default 1800:
# the tests' own 300 s is for native runs; armhf runs the scalar kernels
# emulated), FL_CROSS_CFLAGS (extra CMAKE_C_FLAGS, e.g. -fno-tree-vectorize
# to dodge a gcc 12 aarch64 vectorizer ICE; it also changes the .debs' code).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
MODE=auto
TESTS=1
while [ $# -gt 0 ]; do
  case $1 in
    --mode) MODE=${2:?}; shift 2 ;;
    --mode=*) MODE=${1#--mode=}; shift ;;
    --no-tests) TESTS=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "cross: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
ARCH=${1:-}
case $ARCH in
  arm64) TRIPLET=aarch64-linux-gnu; QEMU=aarch64 ;;
  armhf) TRIPLET=arm-linux-gnueabihf; QEMU=arm ;;
  *) echo "usage: $0 [--mode auto|multiarch|sysroot|chroot] [--no-tests] arm64|armhf" >&2; exit 2 ;;
esac
case $MODE in auto|multiarch|sysroot|chroot) ;; *) echo "cross: bad --mode $MODE" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "cross: needs root (apt-get, binfmt_misc, chroot)" >&2; exit 2; }
BUILD=${FL_CROSS_BUILD_DIR:-$SRC/build/cross-$ARCH}
JOBS=${FL_CROSS_JOBS:-2}
MIRROR=${FL_CROSS_MIRROR:-http://deb.debian.org/debian}
CFLAGS_EXTRA=${FL_CROSS_CFLAGS:-}
TEST_TIMEOUT=${FL_CROSS_TEST_TIMEOUT:-1800}
CHROOT=${FL_CROSS_CHROOT:-/var/tmp/flotilla-chroot-$ARCH}
DEV_PKGS=(libpaho-mqtt-dev libmbedtls-dev libarchive-dev libsqlite3-dev libcjson-dev
          libmicrohttpd-dev libcurl4-openssl-dev libssl-dev zlib1g-dev libcmocka-dev
          libpq-dev libmosquitto-dev)
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300)

T0=$(date +%s)
declare -a TIMES=()
phase() { # phase NAME COMMAND...: run, time, record
  local name=$1 t=$(date +%s); shift
  echo "== cross[$ARCH]: $name"
  if "$@"; then TIMES+=("$name $(( $(date +%s) - t ))s"); return 0; fi
  TIMES+=("$name FAILED after $(( $(date +%s) - t ))s"); return 1
}
summary() {
  echo "== cross[$ARCH] summary: mode $USED"
  printf '  %s\n' "${TIMES[@]}"
  echo "  total $(( $(date +%s) - T0 ))s"
  ls -1 "$BUILD"/debs/*.deb 2>/dev/null | sed 's/^/  deb: /' || true
}
USED=none
trap summary EXIT
# A signal must go through the EXIT trap too (the chroot's bind mounts are
# undone there).
trap 'exit 130' INT
trap 'exit 143' TERM

# binfmt_misc: run ARCH programs directly (tests exec helper programs).
binfmt_enable() {
  local reg=/proc/sys/fs/binfmt_misc
  [ -e $reg/register ] || mount -t binfmt_misc binfmt_misc $reg
  [ -e $reg/qemu-$QEMU ] && { echo 1 > $reg/qemu-$QEMU; return 0; }
  if command -v update-binfmts >/dev/null && update-binfmts --enable qemu-$QEMU 2>/dev/null; then
    return 0
  fi
  [ -f /usr/lib/binfmt.d/qemu-$QEMU.conf ] || { echo "cross: no binfmt entry for qemu-$QEMU"; return 1; }
  cat /usr/lib/binfmt.d/qemu-$QEMU.conf > $reg/register
}

# ---- multiarch --------------------------------------------------------------
multiarch_setup() {
  local cc=$TRIPLET-gcc pkgs=() added=0
  if ! dpkg --print-foreign-architectures | grep -qx "$ARCH"; then
    dpkg --add-architecture "$ARCH"; added=1
    apt-get update -qq || true
  fi
  command -v "$cc" >/dev/null || pkgs+=("crossbuild-essential-$ARCH")
  command -v qemu-$QEMU >/dev/null || command -v qemu-$QEMU-static >/dev/null || pkgs+=(qemu-user qemu-user-binfmt)
  for p in "${DEV_PKGS[@]}"; do pkgs+=("$p:$ARCH"); done
  # -s first: an uninstallable set (lists out of step) must not half-install.
  # A set that installs only by removing build-machine packages is no
  # better: libpq-dev is not Multi-Arch: same, so libpq-dev:ARCH replaces
  # the amd64 one and the native build loses PostgreSQL.
  local sim=0
  apt-get install -s -qq --no-install-recommends "${pkgs[@]}" >/tmp/fl-cross-apt.$$ 2>&1 || sim=1
  if [ $sim = 0 ] && grep -q '^Remv ' /tmp/fl-cross-apt.$$; then
    echo "cross: installing the :$ARCH packages would remove:" $(sed -n 's/^Remv \([^ ]*\).*/\1/p' /tmp/fl-cross-apt.$$)
    sim=1
  fi
  if [ $sim = 1 ]; then
    grep -E '^E:|Depends:|Breaks:|Conflicts:' /tmp/fl-cross-apt.$$ | head -20
    rm -f /tmp/fl-cross-apt.$$
    echo "cross: the :$ARCH packages cannot be installed beside the build machine's"
    # Leave apt as it was: a foreign architecture whose lists fail to
    # download makes every later apt-get update fail.
    if [ "$added" = 1 ] && ! dpkg -l | grep -q ":$ARCH "; then
      dpkg --remove-architecture "$ARCH" && apt-get update -qq || true
    fi
    return 1
  fi
  rm -f /tmp/fl-cross-apt.$$
  "${APT[@]}" install "${pkgs[@]}" >/dev/null
}
multiarch_build() {
  cmake -S "$SRC" -B "$BUILD" -G Ninja --toolchain "$SRC/cmake/toolchain-$TRIPLET.cmake" \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFL_TESTS=ON -DFL_WERROR=OFF \
        -DCMAKE_C_FLAGS="$CFLAGS_EXTRA" >"$BUILD/cross-configure.log" 2>&1 ||
    { tail -30 "$BUILD/cross-configure.log"; return 1; }
  # Keep going past a failing target: report every failure at once.
  cmake --build "$BUILD" -j "$JOBS" -- -k 0 >"$BUILD/cross-build.log" 2>&1 ||
    { grep -E 'FAILED:|error:' "$BUILD/cross-build.log" | head -30; return 1; }
}
raise_timeouts() { # BUILD
  # The tests' TIMEOUT (300 s) is for native runs: ctest's --timeout does
  # not override a test's own, so raise it in this build's generated files.
  find "$1" -name CTestTestfile.cmake -exec \
    sed -i -E "s/ TIMEOUT \"[0-9]+\"/ TIMEOUT \"$TEST_TIMEOUT\"/" {} +
}
run_tests() { # ctest runs each test through CMAKE_CROSSCOMPILING_EMULATOR (qemu)
  raise_timeouts "$1"
  # FL_TEST_TIME_SCALE: tests with a time bound on real work stretch it
  # (emulated armhf runs fmaf in software: 16 tokens take seconds)
  FL_TEST_TIME_SCALE=${FL_TEST_TIME_SCALE:-10} \
  ctest --test-dir "$1" -L unit -j "$JOBS" --timeout "$TEST_TIMEOUT" --output-on-failure \
    >"$1/cross-ctest.log" 2>&1
  local rc=$?
  grep -E '^[0-9]+% tests passed|\(Failed\)|\(Timeout\)|\(SEGFAULT\)|Exception' "$1/cross-ctest.log"
  return $rc
}
make_debs() {
  rm -rf "$1/debs"
  cpack -G DEB --config "$1/CPackConfig.cmake" -B "$1/debs" >"$1/cpack.log" 2>&1 ||
    { tail -20 "$1/cpack.log"; return 1; }
  rm -rf "$1/debs/_CPack_Packages"
  local f
  for f in "$1"/debs/*.deb; do
    a=$(dpkg-deb -f "$f" Architecture)
    [ "$a" = "$ARCH" ] || { echo "cross: $f is for $a, not $ARCH"; return 1; }
  done
}

# ---- chroot -----------------------------------------------------------------
CHROOT_MOUNTS=()
chroot_umount() {
  local i
  for (( i=${#CHROOT_MOUNTS[@]}-1; i>=0; i-- )); do umount -l "${CHROOT_MOUNTS[$i]}" 2>/dev/null || true; done
  CHROOT_MOUNTS=()
}
chroot_root() { # the ARCH root: made once, kept, completed with missing packages
  # A foreign root needs a static qemu registered with the F flag (the
  # interpreter is opened at registration, so it works inside the chroot).
  if ! command -v qemu-$QEMU-static >/dev/null; then
    "${APT[@]}" install qemu-user-static >/dev/null
  fi
  # It replaces qemu-user-binfmt, whose removal can take the shared
  # /usr/libexec/qemu-binfmt links with it: put them back.
  [ -e /usr/libexec/qemu-binfmt/$QEMU-binfmt-P ] || "${APT[@]}" install --reinstall qemu-user-static >/dev/null
  command -v debootstrap >/dev/null || "${APT[@]}" install debootstrap >/dev/null
  local reg=/proc/sys/fs/binfmt_misc
  [ -e $reg/register ] || mount -t binfmt_misc binfmt_misc $reg
  if ! grep -q '^flags:.*F' $reg/qemu-$QEMU 2>/dev/null; then
    [ -e $reg/qemu-$QEMU ] && echo -1 > $reg/qemu-$QEMU
    if command -v update-binfmts >/dev/null; then
      update-binfmts --enable qemu-$QEMU
    else
      cat /usr/lib/binfmt.d/qemu-$QEMU.conf > $reg/register
    fi
  fi
  if [ ! -x "$CHROOT/usr/bin/cmake" ]; then
    # Never delete through a bind mount left by an earlier run.
    if grep -q " $CHROOT/" /proc/mounts; then
      echo "cross: mounts left under $CHROOT: umount them first"; return 1
    fi
    rm -rf --one-file-system "$CHROOT"
    debootstrap --arch="$ARCH" --variant=minbase \
      --include=build-essential,cmake,ninja-build,pkg-config,file,ca-certificates,$(IFS=,; echo "${DEV_PKGS[*]}") \
      bookworm "$CHROOT" "$MIRROR" >/tmp/fl-debootstrap.$$ 2>&1 ||
      { tail -20 /tmp/fl-debootstrap.$$; rm -f /tmp/fl-debootstrap.$$; return 1; }
    rm -f /tmp/fl-debootstrap.$$
  fi
  # A root made before a package joined DEV_PKGS: add what is missing
  # (apt inside the root resolves within ARCH only).
  local missing
  missing=$(chroot "$CHROOT" dpkg-query -W -f='${db:Status-Status} ${Package}\n' "${DEV_PKGS[@]}" 2>&1 |
            awk '$1 != "installed" { print $NF }' | sed 's/.*package //; s/[^a-z0-9.+-].*//' | sort -u)
  if [ -n "$missing" ]; then
    echo "cross: adding to the $ARCH root:" $missing
    mount -t proc proc "$CHROOT/proc" || return 1
    chroot "$CHROOT" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq --no-install-recommends \
      install $missing >/tmp/fl-chroot-apt.$$ 2>&1
    local rc=$?
    umount -l "$CHROOT/proc"
    [ $rc -eq 0 ] || { tail -20 /tmp/fl-chroot-apt.$$; rm -f /tmp/fl-chroot-apt.$$; return 1; }
    rm -f /tmp/fl-chroot-apt.$$
  fi
}
chroot_mount() {
  # The source and build trees appear at the same paths inside, so logs and
  # CMake caches read the same from both sides.
  local d
  mkdir -p "$BUILD"
  for d in "$SRC" "$BUILD" ${FL_CROSS_EXTRA_BINDS:-}; do
    mkdir -p "$CHROOT$d"
    mount --bind "$d" "$CHROOT$d" || return 1
    CHROOT_MOUNTS+=("$CHROOT$d")
  done
  mkdir -p "$CHROOT/proc" "$CHROOT/dev"
  mount -t proc proc "$CHROOT/proc" || return 1
  CHROOT_MOUNTS+=("$CHROOT/proc")
  mount --bind /dev "$CHROOT/dev" || return 1
  CHROOT_MOUNTS+=("$CHROOT/dev")
}
chroot_setup() { chroot_root && chroot_mount; }
chroot_cpack() { # the .debs, made inside the root (its dpkg-shlibdeps and dpkg database)
  local b=$BUILD
  chroot "$CHROOT" /bin/sh -c \
    "rm -rf '$b/debs' && cpack -G DEB --config '$b/CPackConfig.cmake' -B '$b/debs' >'$b/cpack.log' 2>&1 && rm -rf '$b/debs/_CPack_Packages'" ||
    { tail -20 "$b/cpack.log"; return 1; }
  local f a
  for f in "$b"/debs/*.deb; do
    a=$(dpkg-deb -f "$f" Architecture)
    [ "$a" = "$ARCH" ] || { echo "cross: $f is for $a, not $ARCH"; return 1; }
  done
}

# ---- sysroot: the root's files, the build machine's cross gcc ---------------
sysroot_setup() {
  local pkgs=()
  command -v "$TRIPLET-gcc" >/dev/null || pkgs+=("crossbuild-essential-$ARCH")
  command -v debootstrap >/dev/null || pkgs+=(debootstrap)
  if [ ${#pkgs[@]} -gt 0 ]; then
    "${APT[@]}" install "${pkgs[@]}" >/tmp/fl-cross-apt.$$ 2>&1 ||
      { tail -5 /tmp/fl-cross-apt.$$; rm -f /tmp/fl-cross-apt.$$; echo "cross: no $TRIPLET-gcc"; return 1; }
    rm -f /tmp/fl-cross-apt.$$
  fi
  chroot_root || return 1
  # Debian's -dev packages ship some .so links with absolute targets
  # (libm.so -> /lib/TRIPLET/libm.so.6, libz.so, ...): seen from the build
  # machine they point outside the root, and ld would silently take the .a.
  # Make them relative (the same files, also inside the root).
  local l t n=0
  while IFS= read -r -d '' l; do
    t=$(readlink "$l")
    [ -e "$CHROOT$t" ] || continue
    ln -snf "$(realpath --relative-to="$(dirname "$l")" "$CHROOT$t")" "$l"
    n=$((n + 1))
  done < <(find "$CHROOT/usr/lib/$TRIPLET" "$CHROOT/usr/include" -type l -lname '/*' -print0)
  [ $n -eq 0 ] || echo "cross: $n absolute library links in the root made relative"
}
sysroot_tests() { local -x QEMU_LD_PREFIX=$CHROOT; run_tests "$BUILD"; }
sysroot_build() {
  cmake -S "$SRC" -B "$BUILD" -G Ninja --toolchain "$SRC/cmake/toolchain-sysroot.cmake" \
        -DFL_CROSS_TRIPLET="$TRIPLET" -DFL_CROSS_SYSROOT="$CHROOT" \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFL_TESTS=ON -DFL_WERROR=OFF \
        -DCMAKE_C_FLAGS="$CFLAGS_EXTRA" >"$BUILD/cross-configure.log" 2>&1 ||
    { tail -30 "$BUILD/cross-configure.log"; return 1; }
  cmake --build "$BUILD" -j "$JOBS" -- -k 0 >"$BUILD/cross-build.log" 2>&1 ||
    { grep -E 'FAILED:|error:' "$BUILD/cross-build.log" | head -30; return 1; }
}
chroot_build() {
  local b=$BUILD
  chroot "$CHROOT" /bin/sh -c "cmake -S '$SRC' -B '$b' -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DFL_TESTS=ON -DFL_WERROR=OFF -DCMAKE_C_FLAGS='$CFLAGS_EXTRA' >'$b/cross-configure.log' 2>&1 &&
    cmake --build '$b' -j $JOBS -- -k 0 >'$b/cross-build.log' 2>&1" ||
    { grep -hE 'FAILED:|error:|Error' "$BUILD/cross-build.log" "$BUILD/cross-configure.log" 2>/dev/null | head -30; return 1; }
}

mkdir -p "$BUILD"
rc=0
if [ "$MODE" = auto ] || [ "$MODE" = multiarch ]; then
  if phase "multiarch: install cross gcc and :$ARCH -dev packages" multiarch_setup; then
    USED=multiarch
  elif [ "$MODE" = multiarch ]; then
    echo "cross: multiarch mode impossible here (see above)"; exit 1
  fi
fi
if [ "$USED" = none ] && { [ "$MODE" = auto ] || [ "$MODE" = sysroot ]; }; then
  trap 'chroot_umount; summary' EXIT
  if phase "sysroot: cross gcc + $ARCH bookworm root in $CHROOT (debootstrap, reused)" sysroot_setup; then
    USED=sysroot
  elif [ "$MODE" = sysroot ]; then
    echo "cross: sysroot mode impossible here (see above)"; exit 1
  fi
fi
case $USED in
multiarch)
  phase "multiarch: configure + build" multiarch_build || rc=1
  phase "binfmt_misc: qemu-$QEMU" binfmt_enable || rc=1
  if [ "$TESTS" = 1 ]; then phase "unit tests under qemu-$QEMU" run_tests "$BUILD" || rc=1; fi
  phase "cpack .debs" make_debs "$BUILD" || rc=1
  ;;
sysroot)
  phase "sysroot: configure + build (cross gcc, native)" sysroot_build || rc=1
  phase "binfmt_misc: qemu-$QEMU" binfmt_enable || rc=1
  if [ "$TESTS" = 1 ]; then
    # Helper programs a test execs go through binfmt_misc: their qemu finds
    # the ARCH loader and libraries through QEMU_LD_PREFIX.
    phase "unit tests under qemu-$QEMU -L $CHROOT" sysroot_tests || rc=1
  fi
  phase "chroot: bind mounts" chroot_mount || exit 1
  phase "cpack .debs (in the root)" chroot_cpack || rc=1
  ;;
none)
  USED=chroot
  trap 'chroot_umount; summary' EXIT
  phase "chroot: debootstrap $ARCH bookworm (reused when present)" chroot_setup || exit 1
  phase "chroot: configure + build (native gcc under qemu)" chroot_build || rc=1
  b=$BUILD
  if [ "$TESTS" = 1 ]; then
    raise_timeouts "$BUILD"
    phase "unit tests (in chroot)" chroot "$CHROOT" ctest --test-dir "$b" -L unit -j "$JOBS" \
      --timeout "$TEST_TIMEOUT" --output-on-failure || rc=1
  fi
  phase "cpack .debs (in chroot)" chroot_cpack || rc=1
  ;;
esac
exit $rc
