# Cross build for Debian arm64 (aarch64-linux-gnu) with Debian's multiarch cross toolchain:
#   apt-get install crossbuild-essential-arm64 (or gcc-aarch64-linux-gnu) and the :arm64 -dev
#   packages of packaging/cross/build.sh; then
#   cmake -G Ninja -B build/arm64 --toolchain cmake/toolchain-aarch64-linux-gnu.cmake
# Libraries and .pc files come from /usr/lib/aarch64-linux-gnu (multiarch); headers from
# /usr/include and /usr/include/aarch64-linux-gnu, which the Debian cross gcc searches.
# Tests run through qemu-aarch64 (qemu-user), found by ctest via
# CMAKE_CROSSCOMPILING_EMULATOR. packaging/cross/build.sh drives all of it,
# or builds inside a arm64 chroot when the multiarch packages cannot be installed.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_AR aarch64-linux-gnu-ar CACHE FILEPATH "")
set(CMAKE_RANLIB aarch64-linux-gnu-ranlib CACHE FILEPATH "")
set(CMAKE_STRIP aarch64-linux-gnu-strip CACHE FILEPATH "")
set(CMAKE_OBJDUMP aarch64-linux-gnu-objdump CACHE FILEPATH "")

# Search only the target's multiarch directories for libraries, headers and
# CMake packages; programs (pkg-config, gzip) are the build machine's.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_SYSTEM_PREFIX_PATH /usr /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(CMAKE_IGNORE_PATH /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu
    /usr/lib/x86_64-linux-gnu/cmake /usr/include/x86_64-linux-gnu)
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")

find_program(FL_QEMU NAMES qemu-aarch64-static qemu-aarch64)
if(FL_QEMU)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${FL_QEMU})
endif()
# Debian architecture of the .debs (cmake/packaging.cmake).
set(FL_DEB_ARCH arm64)
