# Cross build for Debian armhf (arm-linux-gnueabihf) with Debian's multiarch cross toolchain:
#   apt-get install crossbuild-essential-armhf (or gcc-arm-linux-gnueabihf) and the :armhf -dev
#   packages of packaging/cross/build.sh; then
#   cmake -G Ninja -B build/armhf --toolchain cmake/toolchain-arm-linux-gnueabihf.cmake
# Libraries and .pc files come from /usr/lib/arm-linux-gnueabihf (multiarch); headers from
# /usr/include and /usr/include/arm-linux-gnueabihf, which the Debian cross gcc searches.
# Tests run through qemu-arm (qemu-user), found by ctest via
# CMAKE_CROSSCOMPILING_EMULATOR. packaging/cross/build.sh drives all of it,
# or builds inside a armhf chroot when the multiarch packages cannot be installed.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_LIBRARY_ARCHITECTURE arm-linux-gnueabihf)
set(CMAKE_C_COMPILER arm-linux-gnueabihf-gcc)
set(CMAKE_AR arm-linux-gnueabihf-ar CACHE FILEPATH "")
set(CMAKE_RANLIB arm-linux-gnueabihf-ranlib CACHE FILEPATH "")
set(CMAKE_STRIP arm-linux-gnueabihf-strip CACHE FILEPATH "")
set(CMAKE_OBJDUMP arm-linux-gnueabihf-objdump CACHE FILEPATH "")

# Search only the target's multiarch directories for libraries, headers and
# CMake packages; programs (pkg-config, gzip) are the build machine's.
set(CMAKE_FIND_ROOT_PATH /usr/arm-linux-gnueabihf)
set(CMAKE_SYSTEM_PREFIX_PATH /usr /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(CMAKE_IGNORE_PATH /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu
    /usr/lib/x86_64-linux-gnu/cmake /usr/include/x86_64-linux-gnu)
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/arm-linux-gnueabihf/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")

find_program(FL_QEMU NAMES qemu-arm-static qemu-arm)
if(FL_QEMU)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${FL_QEMU})
endif()
# Debian architecture of the .debs (cmake/packaging.cmake).
set(FL_DEB_ARCH armhf)
