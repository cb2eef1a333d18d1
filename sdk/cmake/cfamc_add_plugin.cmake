# cfamc_add_plugin(<target> SOURCES <src>... [NO_TORCH])
#
# Builds a cfamc plugin library: a MODULE with hidden visibility that exports only its entry symbol
# (cfamc_plugin_entry_v<major>), links the SDK, and, unless NO_TORCH, links LibTorch and records the build
# fingerprint (LibTorch's CUDA version or "none") the host checks when it loads the plugin.
# A LibTorch plugin needs find_package(Torch) before this call.

# cfamc_torch_cuda_version(<var>): the CUDA version the found LibTorch was built with ("13.0"), or "none".
function(cfamc_torch_cuda_version var)
  set(cuda "none")
  if("${TORCH_LIBRARIES}" MATCHES "c10_cuda" AND CUDA_VERSION)
    set(cuda "${CUDA_VERSION}")
  endif()
  set(${var} "${cuda}" PARENT_SCOPE)
endfunction()

function(cfamc_add_plugin target)
  cmake_parse_arguments(ARG "NO_TORCH" "" "SOURCES" ${ARGN})
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
  endif()
endfunction()
