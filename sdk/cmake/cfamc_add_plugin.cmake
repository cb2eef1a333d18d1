# cfamc_add_plugin(<target> SOURCES <src>... [NO_TORCH] [INSTALL])
#
# Builds a cfamc plugin library: a MODULE with hidden visibility that exports only its entry symbol
# (cfamc_plugin_entry_v<major>), links the SDK (cfamc.h, plugin.hpp and DLPack's dlpack.h), and, unless
# NO_TORCH, links LibTorch and records the build fingerprint (LibTorch's CUDA version or "none") the host
# checks when it loads the plugin. A LibTorch plugin needs find_package(Torch) before this call.
# INSTALL is cfamc_install_plugin(<target>).
#
# cfamc_install_plugin(<target> [DESTINATION <dir>])
#
# Installs the plugin where the host finds it without CFAMC_PLUGIN_PATH: by default CFAMC_PLUGIN_INSTALL_DIR,
# which for a project built against an installed SDK is the plugin folder of that cfamc installation
# (<cfamc prefix>/lib/cfamc/plugins), so a plain `cmake --install build` puts it beside the shipped ones.

# cfamc_torch_cuda_version(<var>): the CUDA version the found LibTorch was built with ("13.0"), or "none".
function(cfamc_torch_cuda_version var)
  set(cuda "none")
  if("${TORCH_LIBRARIES}" MATCHES "c10_cuda" AND CUDA_VERSION)
    set(cuda "${CUDA_VERSION}")
  endif()
  set(${var} "${cuda}" PARENT_SCOPE)
endfunction()

# cfamc_torch_library_dir(<var>): the folder of the found LibTorch's libraries, or "" without LibTorch.
# TorchConfig.cmake finds libtorch itself (TORCH_LIBRARY); the target's own location is the fallback.
function(cfamc_torch_library_dir var)
  set(location "${TORCH_LIBRARY}")
  if(NOT location AND TARGET torch)
    get_target_property(configs torch IMPORTED_CONFIGURATIONS)
    foreach(suffix IN ITEMS "" ${configs})
      if(suffix)
        string(TOUPPER "_${suffix}" suffix)
      endif()
      get_target_property(location torch IMPORTED_LOCATION${suffix})
      if(location)
        break()
      endif()
    endforeach()
  endif()
  set(dir "")
  if(location)
    get_filename_component(dir "${location}" DIRECTORY)
  endif()
  set(${var} "${dir}" PARENT_SCOPE)
endfunction()

# cfamc_set_install_rpath(<target> <install dir>): the run-time search path of <target> once installed in
# <install dir>. Its only entry is LibTorch's library folder (everything else the host and plugins link
# lives in system folders, and a plugin finds LibTorch already loaded by the host). It is relative to the
# installed file ($ORIGIN/...) when LibTorch lies inside the install prefix, so that the tree can be moved
# or copied whole, and LibTorch's absolute path otherwise. The prefix is CMAKE_INSTALL_PREFIX for a relative
# <install dir>, and the cfamc installation the SDK came from (CFAMC_INSTALL_PREFIX) for an absolute one.
function(cfamc_set_install_rpath target install_dir)
  cfamc_torch_library_dir(torch_dir)
  set(rpath "")
  if(torch_dir)
    set(rpath "${torch_dir}")
    if(IS_ABSOLUTE "${install_dir}")
      set(dir "${install_dir}")
      set(prefix "${CFAMC_INSTALL_PREFIX}")
    else()
      set(dir "${CMAKE_INSTALL_PREFIX}/${install_dir}")
      set(prefix "${CMAKE_INSTALL_PREFIX}")
    endif()
    if(prefix)
      cmake_path(IS_PREFIX prefix "${torch_dir}" NORMALIZE torch_inside)
      cmake_path(IS_PREFIX prefix "${dir}" NORMALIZE target_inside)
      if(torch_inside AND target_inside)
        file(RELATIVE_PATH relative "${dir}" "${torch_dir}")
        set(rpath "$ORIGIN/${relative}")
      endif()
    endif()
  endif()
  set_target_properties(${target} PROPERTIES INSTALL_RPATH "${rpath}")
endfunction()

function(cfamc_install_plugin target)
  cmake_parse_arguments(ARG "" "DESTINATION" "" ${ARGN})
  set(destination "${CFAMC_PLUGIN_INSTALL_DIR}")
  if(ARG_DESTINATION)
    set(destination "${ARG_DESTINATION}")
  endif()
  if(NOT destination)
    message(FATAL_ERROR "cfamc_install_plugin(${target}): no DESTINATION and no CFAMC_PLUGIN_INSTALL_DIR")
  endif()
  get_target_property(uses_torch ${target} CFAMC_USES_TORCH)
  if(uses_torch)
    cfamc_set_install_rpath(${target} "${destination}")
  endif()
  install(TARGETS ${target} LIBRARY DESTINATION "${destination}")
endfunction()

function(cfamc_add_plugin target)
  cmake_parse_arguments(ARG "NO_TORCH;INSTALL" "" "SOURCES" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "cfamc_add_plugin(${target}): SOURCES is empty")
  endif()
  add_library(${target} MODULE ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE cfamc::sdk)
  set_target_properties(${target} PROPERTIES
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    CXX_STANDARD 17
    CXX_STANDARD_REQUIRED ON)
  set(map "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/cfamc_plugin.map")
  target_link_options(${target} PRIVATE "LINKER:--version-script=${map}" "LINKER:--no-undefined")
  set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS "${map}")
  if(NOT ARG_NO_TORCH)
    if(NOT TARGET torch)
      message(FATAL_ERROR "cfamc_add_plugin(${target}): call find_package(Torch) first, or pass NO_TORCH")
    endif()
    cfamc_torch_cuda_version(cuda)
    target_link_libraries(${target} PRIVATE ${TORCH_LIBRARIES})
    target_compile_definitions(${target} PRIVATE CFAMC_TORCH_CUDA_VERSION="${cuda}")
    set_target_properties(${target} PROPERTIES CFAMC_USES_TORCH ON)
    # The usual place; a plugin installed elsewhere gets its path again from cfamc_install_plugin.
    if(CFAMC_PLUGIN_INSTALL_DIR)
      cfamc_set_install_rpath(${target} "${CFAMC_PLUGIN_INSTALL_DIR}")
    endif()
  endif()
  if(ARG_INSTALL)
    cfamc_install_plugin(${target})
  endif()
endfunction()
