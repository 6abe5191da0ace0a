# CUTLASS headers: CUTLASS_DIR (a CUTLASS checkout or install prefix) wins; otherwise the `nvidia-cutlass`
# wheel (pinned in requirements-build.txt), whose package ships include/ and tools/util/include.
# Sets Cutlass_FOUND and CUTLASS_INCLUDE_DIRS.
set(CUTLASS_DIR "$ENV{CUTLASS_DIR}" CACHE PATH "CUTLASS root (overrides the nvidia-cutlass wheel)")
set(_cutlass_root "")
if(CUTLASS_DIR)
  set(_cutlass_root "${CUTLASS_DIR}")
else()
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
            "import os, importlib.util as u; print(os.path.join(u.find_spec('cutlass_library').submodule_search_locations[0], 'source'))"
    OUTPUT_VARIABLE _cutlass_root RESULT_VARIABLE _rc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(NOT _rc EQUAL 0)
    set(_cutlass_root "")
  endif()
endif()
if(_cutlass_root AND EXISTS "${_cutlass_root}/include/cutlass/cutlass.h")
  set(CUTLASS_INCLUDE_DIRS "${_cutlass_root}/include" "${_cutlass_root}/tools/util/include")
  set(Cutlass_FOUND TRUE)
  message(STATUS "fpquant_ext: CUTLASS headers at ${_cutlass_root}")
else()
  set(Cutlass_FOUND FALSE)
endif()
