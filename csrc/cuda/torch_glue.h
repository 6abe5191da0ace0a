// Helpers shared by the CUDA torch glue files (ops_cuda.cpp, linear_cuda.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include "cuda/quantize.h"

namespace fpquant {

inline cuda::DType dtype_of(at::ScalarType t) {
  return t == at::kFloat ? cuda::DType::kF32 : (t == at::kBFloat16 ? cuda::DType::kBF16 : cuda::DType::kF16);
}

inline void check_cuda(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA error: ", cudaGetErrorString(err));
}

// A tensor the kernels read with 16-byte vector loads, on a GPU with mma.sync (compute capability >= 8.0).
inline void check_device_and_alignment(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, op, ": ", name,
                    " must be 16-byte aligned on CUDA (a view at an odd storage offset is not; use .clone())");
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, t.get_device());
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, t.get_device());
  TORCH_CHECK(major >= 8, op, ": needs a GPU of compute capability 8.0 or newer, got ", major, ".", minor);
}

}  // namespace fpquant
