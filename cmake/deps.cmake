# Third-party libraries, all from Debian bookworm packages (see packaging/deps.sh).
# Neither Paho nor mbedTLS ships a pkg-config file; Paho's CMake config needs
# OpenSSL found first.
find_package(PkgConfig REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(Threads REQUIRED)
find_package(eclipse-paho-mqtt-c REQUIRED)

pkg_check_modules(SQLITE3 REQUIRED IMPORTED_TARGET sqlite3)
pkg_check_modules(LIBARCHIVE REQUIRED IMPORTED_TARGET libarchive)
pkg_check_modules(CJSON REQUIRED IMPORTED_TARGET libcjson)
pkg_check_modules(MHD REQUIRED IMPORTED_TARGET libmicrohttpd)
pkg_check_modules(CURL REQUIRED IMPORTED_TARGET libcurl)

find_library(MBEDCRYPTO_LIB mbedcrypto REQUIRED)
find_library(MBEDX509_LIB mbedx509 REQUIRED)
find_library(MBEDTLS_LIB mbedtls REQUIRED)
find_path(MBEDTLS_INCLUDE_DIR mbedtls/version.h REQUIRED)
add_library(fl_mbedtls INTERFACE)
target_include_directories(fl_mbedtls SYSTEM INTERFACE ${MBEDTLS_INCLUDE_DIR})
target_link_libraries(fl_mbedtls INTERFACE ${MBEDX509_LIB} ${MBEDCRYPTO_LIB})
add_library(fl_mbedtls_tls INTERFACE)
target_link_libraries(fl_mbedtls_tls INTERFACE ${MBEDTLS_LIB} fl_mbedtls)

if(FL_TESTS)
  find_library(CMOCKA_LIB cmocka REQUIRED)
  find_path(CMOCKA_INCLUDE_DIR cmocka.h REQUIRED)
endif()
