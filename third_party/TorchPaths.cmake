# Locates the PyTorch that the Python interpreter imports (no TorchConfig.cmake: it drags in CUDA/NVTX
# discovery we do not need). Sets TORCH_INCLUDE_DIRS, TORCH_LIBRARY_DIR, TORCH_CXX11_ABI, TORCH_CUDA_VERSION.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
          "import os, torch; r=os.path.dirname(torch.__file__); print(os.path.join(r,'include')); print(os.path.join(r,'lib')); print(int(torch._C._GLIBCXX_USE_CXX11_ABI)); print(torch.version.cuda or ''); print(torch.__version__)"
  OUTPUT_VARIABLE _torch_out
  RESULT_VARIABLE _torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "fpquant_ext: cannot import torch with ${Python_EXECUTABLE}. Install torch first and build "
                      "with `pip install --no-build-isolation .` so the build sees it.")
endif()
string(REPLACE "\n" ";" _torch_lines "${_torch_out}")
list(GET _torch_lines 0 _torch_inc)
list(GET _torch_lines 1 TORCH_LIBRARY_DIR)
list(GET _torch_lines 2 TORCH_CXX11_ABI)
list(GET _torch_lines 3 TORCH_CUDA_VERSION)
list(GET _torch_lines 4 TORCH_VERSION)
set(TORCH_INCLUDE_DIRS "${_torch_inc}" "${_torch_inc}/torch/csrc/api/include")
message(STATUS "fpquant_ext: torch ${TORCH_VERSION} (CUDA '${TORCH_CUDA_VERSION}') at ${_torch_inc}")
