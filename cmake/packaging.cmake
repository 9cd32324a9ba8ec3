# Install rules and Debian packages (CPack DEB, one package per component):
#   flotilla-agent       agent component: /usr/bin/flotilla-agent, its unit, /etc/flotilla/agent.conf
#   flotilla-controller  controller component: /usr/bin/flotilla-controller, its unit, controller.conf
#   flotilla-cli         cli component: /usr/bin/flotilla
# Included once from the root CMakeLists.txt (after the programs' directories;
# included earlier, e.g. through CMAKE_PROJECT_INCLUDE, it defers itself to the
# end of the root directory). Build the packages with:
#   cpack -G DEB --config BUILD/CPackConfig.cmake -B OUTDIR
# Units go to /lib/systemd/system and configuration to /etc/flotilla (absolute
# destinations: the packages are the supported way to install). See
# docs/operations-packaging.md.
include_guard(GLOBAL)

function(_fl_packaging)
  set(pkg ${CMAKE_SOURCE_DIR}/packaging)
  set(gen ${CMAKE_BINARY_DIR}/packaging-deb)
  file(MAKE_DIRECTORY ${gen})
  set(FL_USER flotilla)

  # --- install rules ------------------------------------------------------
  install(TARGETS flotilla-agent RUNTIME DESTINATION bin COMPONENT agent)
  install(TARGETS flotilla-controller RUNTIME DESTINATION bin COMPONENT controller)
  install(TARGETS flotilla RUNTIME DESTINATION bin COMPONENT cli)

  install(FILES ${pkg}/systemd/flotilla-agent.service
          DESTINATION /lib/systemd/system COMPONENT agent)
  install(FILES ${pkg}/systemd/flotilla-controller.service
          DESTINATION /lib/systemd/system COMPONENT controller)
  install(FILES ${pkg}/config/agent.conf DESTINATION /etc/flotilla COMPONENT agent)
  install(FILES ${pkg}/config/controller.conf DESTINATION /etc/flotilla COMPONENT controller)
  # Root keys go here (provisioning); an empty directory owned by the package.
  install(DIRECTORY DESTINATION /etc/flotilla/trust COMPONENT agent)
  foreach(comp agent controller)
    install(FILES ${pkg}/systemd/flotilla.sysusers DESTINATION lib/sysusers.d
            RENAME flotilla-${comp}.conf COMPONENT ${comp})
  endforeach()

  # Debian policy: copyright and (native package) changelog.gz per package.
  configure_file(${pkg}/deb/changelog ${gen}/changelog @ONLY)
  execute_process(COMMAND gzip -9nc ${gen}/changelog
                  OUTPUT_FILE ${gen}/changelog.gz RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "packaging: gzip of the changelog failed")
  endif()
  foreach(comp agent controller cli)
    install(FILES ${pkg}/deb/copyright ${gen}/changelog.gz
            DESTINATION share/doc/flotilla-${comp} COMPONENT ${comp})
  endforeach()
  foreach(comp agent controller)
    install(FILES ${CMAKE_SOURCE_DIR}/docs/operations-packaging.md
            DESTINATION share/doc/flotilla-${comp} COMPONENT ${comp})
  endforeach()
  foreach(page flotilla-agent.8 flotilla-controller.8 flotilla.1)
    if(EXISTS ${pkg}/deb/man/${page})
      execute_process(COMMAND gzip -9nc ${pkg}/deb/man/${page}
                      OUTPUT_FILE ${gen}/${page}.gz)
    endif()
  endforeach()
  if(EXISTS ${gen}/flotilla-agent.8.gz)
    install(FILES ${gen}/flotilla-agent.8.gz DESTINATION share/man/man8 COMPONENT agent)
    install(FILES ${gen}/flotilla-controller.8.gz DESTINATION share/man/man8 COMPONENT controller)
    install(FILES ${gen}/flotilla.1.gz DESTINATION share/man/man1 COMPONENT cli)
  endif()

  # Maintainer scripts (dh_installsystemd's snippets, by hand) and conffiles.
  foreach(comp agent controller)
    set(FL_PKG flotilla-${comp})
    set(FL_UNIT flotilla-${comp}.service)
    if(comp STREQUAL "agent")
      set(FL_STATE_DIR /var/lib/flotilla)
    else()
      set(FL_STATE_DIR /var/lib/flotilla-controller)
    endif()
    file(MAKE_DIRECTORY ${gen}/${comp})
    foreach(script postinst prerm postrm)
      configure_file(${pkg}/deb/${script}.in ${gen}/${comp}/${script} @ONLY
                     FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ
                                      GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
    endforeach()
    file(WRITE ${gen}/${comp}/conffiles "/etc/flotilla/${comp}.conf\n")
  endforeach()

  # --- CPack ----------------------------------------------------------------
  set(CPACK_GENERATOR DEB)
  set(CPACK_PACKAGE_NAME flotilla)
  set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
  set(CPACK_PACKAGE_VENDOR "Flotilla")
  set(CPACK_PACKAGE_CONTACT "Flotilla maintainers <flotilla@example.invalid>")
  set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
  set(CPACK_STRIP_FILES ON)
  set(CPACK_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS
      OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
  set(CPACK_DEB_COMPONENT_INSTALL ON)
  set(CPACK_COMPONENTS_ALL agent controller cli)
  set(CPACK_COMPONENTS_GROUPING IGNORE)
  set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
  set(CPACK_DEBIAN_COMPRESSION_TYPE xz)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
  set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
  set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
  set(CPACK_DEBIAN_PACKAGE_SECTION admin)
  set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://example.invalid/flotilla")
  # Cross builds: the toolchain file names the Debian architecture
  # (dpkg --print-architecture would name the build machine's).
  if(FL_DEB_ARCH)
    set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE ${FL_DEB_ARCH})
  endif()

  set(CPACK_DEBIAN_AGENT_PACKAGE_NAME flotilla-agent)
  set(CPACK_DEBIAN_CONTROLLER_PACKAGE_NAME flotilla-controller)
  set(CPACK_DEBIAN_CLI_PACKAGE_NAME flotilla-cli)
  set(CPACK_DEBIAN_AGENT_PACKAGE_DEPENDS "adduser, libmicrohttpd12, libarchive13") # dlopen()ed: shlibdeps cannot see them
  set(CPACK_DEBIAN_AGENT_PACKAGE_RECOMMENDS "libxgboost0") # the xgboost backend (dlopen()ed in runners)
  set(CPACK_DEBIAN_CONTROLLER_PACKAGE_DEPENDS "adduser")
  set(CPACK_DEBIAN_CONTROLLER_PACKAGE_RECOMMENDS "mosquitto")
  set(CPACK_DEBIAN_CLI_PACKAGE_SECTION utils)
  set(CPACK_DEBIAN_AGENT_DESCRIPTION
      "Flotilla device agent: signed model updates and local inference
flotilla-agent runs on every edge device as a systemd service. It installs
signed model bundles into an inactive slot, tests them on the device,
switches atomically, rolls back on failure, and serves the active model
to local applications.")
  set(CPACK_DEBIAN_CONTROLLER_DESCRIPTION
      "Flotilla controller: fleet registry and staged model rollouts
flotilla-controller tracks the devices of a fleet and the model versions
they run, drives staged rollouts with automatic halt and fleet rollback,
and serves bundle chunks to devices over MQTT.")
  set(CPACK_DEBIAN_CLI_DESCRIPTION
      "Flotilla command-line tool for operators
flotilla manages keys and keyrings, builds, signs, verifies and inspects
model bundles, and talks to the Flotilla controller.")
  foreach(comp agent controller)
    string(TOUPPER ${comp} C)
    set(CPACK_DEBIAN_${C}_PACKAGE_CONTROL_EXTRA
        ${gen}/${comp}/postinst ${gen}/${comp}/prerm ${gen}/${comp}/postrm
        ${gen}/${comp}/conffiles)
  endforeach()
  include(CPack)
endfunction()

if(TARGET flotilla-agent AND TARGET flotilla-controller AND TARGET flotilla)
  _fl_packaging()
else()
  cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL _fl_packaging)
endif()
