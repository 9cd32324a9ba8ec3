# Cross build against a foreign Debian root used only as a sysroot: the
# build machine's cross gcc (crossbuild-essential-ARCH, native speed), the
# target's headers, libraries, .pc files and CMake packages from a bookworm
# ARCH root made with debootstrap (the one packaging/cross/build.sh keeps in
# /var/tmp/flotilla-chroot-ARCH). Needs no :ARCH packages on the build
# machine, so it works while Debian's ARCH lists are out of step with amd64.
#
#   cmake -G Ninja -B build/armhf --toolchain cmake/toolchain-sysroot.cmake \
#         -DFL_CROSS_TRIPLET=arm-linux-gnueabihf -DFL_CROSS_SYSROOT=/var/tmp/flotilla-chroot-armhf
#
# FL_CROSS_TRIPLET: arm-linux-gnueabihf or aarch64-linux-gnu (or the
# environment variable of the same name); FL_CROSS_SYSROOT: the root. Tests
# run through qemu-user with -L SYSROOT (the root's dynamic loader and
# libraries); a test that execs another ARCH program goes through
# binfmt_misc and needs QEMU_LD_PREFIX=SYSROOT in the environment
# (packaging/cross/build.sh sets it). The .debs are made inside the root
# (dpkg-shlibdeps needs the root's dpkg database).
foreach(v FL_CROSS_TRIPLET FL_CROSS_SYSROOT)
  if(NOT ${v} AND DEFINED ENV{${v}})
    set(${v} $ENV{${v}})
  endif()
  if(NOT ${v})
    message(FATAL_ERROR "toolchain-sysroot: set ${v} (-D${v}=... or the environment)")
  endif()
  # try_compile() projects read this file again: pass the values on.
  set(ENV{${v}} ${${v}})
endforeach()
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES FL_CROSS_TRIPLET FL_CROSS_SYSROOT)

if(FL_CROSS_TRIPLET STREQUAL "arm-linux-gnueabihf")
  set(CMAKE_SYSTEM_PROCESSOR arm)
  set(_fl_qemu arm)
  set(FL_DEB_ARCH armhf)
elseif(FL_CROSS_TRIPLET STREQUAL "aarch64-linux-gnu")
  set(CMAKE_SYSTEM_PROCESSOR aarch64)
  set(_fl_qemu aarch64)
  set(FL_DEB_ARCH arm64)
else()
  message(FATAL_ERROR "toolchain-sysroot: unknown FL_CROSS_TRIPLET ${FL_CROSS_TRIPLET}")
endif()
if(NOT EXISTS ${FL_CROSS_SYSROOT}/usr/lib/${FL_CROSS_TRIPLET}/libc.so)
  message(FATAL_ERROR "toolchain-sysroot: ${FL_CROSS_SYSROOT} has no ${FL_CROSS_TRIPLET} libc6-dev")
endif()

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_LIBRARY_ARCHITECTURE ${FL_CROSS_TRIPLET})
set(CMAKE_C_COMPILER ${FL_CROSS_TRIPLET}-gcc)
set(CMAKE_AR ${FL_CROSS_TRIPLET}-ar CACHE FILEPATH "")
set(CMAKE_RANLIB ${FL_CROSS_TRIPLET}-ranlib CACHE FILEPATH "")
set(CMAKE_STRIP ${FL_CROSS_TRIPLET}-strip CACHE FILEPATH "")
set(CMAKE_OBJDUMP ${FL_CROSS_TRIPLET}-objdump CACHE FILEPATH "")
set(CMAKE_SYSROOT ${FL_CROSS_SYSROOT})

# Libraries, headers and packages only from the root; programs (pkg-config,
# gzip) are the build machine's.
set(CMAKE_FIND_ROOT_PATH ${FL_CROSS_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
set(ENV{PKG_CONFIG_SYSROOT_DIR} ${FL_CROSS_SYSROOT})
set(ENV{PKG_CONFIG_LIBDIR} "${FL_CROSS_SYSROOT}/usr/lib/${FL_CROSS_TRIPLET}/pkgconfig:${FL_CROSS_SYSROOT}/usr/share/pkgconfig:${FL_CROSS_SYSROOT}/usr/lib/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")

find_program(FL_QEMU NAMES qemu-${_fl_qemu}-static qemu-${_fl_qemu})
if(FL_QEMU)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${FL_QEMU} -L ${FL_CROSS_SYSROOT})
endif()
