// Helpers shared by the CUDA torch glue files (csrc/ops/*_cuda.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <array>
#include <mutex>

#include "cuda/common/gpu_info.h"
#include "cuda/quantize/quantize.h"

#ifndef FPQUANT_SM90_KERNELS
#define FPQUANT_SM90_KERNELS 0
#endif
#ifndef FPQUANT_SM100_KERNELS
#define FPQUANT_SM100_KERNELS 0
#endif
#ifndef FPQUANT_SM120_KERNELS
#define FPQUANT_SM120_KERNELS 0
#endif

namespace fpquant {

inline core::DType dtype_of(at::ScalarType t) {
  return t == at::kFloat ? core::DType::kF32 : (t == at::kBFloat16 ? core::DType::kBF16 : core::DType::kF16);
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

// The facts the plans need about `device`, read once per device.
inline cuda::GpuInfo gpu_info(int device) {
  constexpr int kMaxDevices = 64;
  static std::array<cuda::GpuInfo, kMaxDevices> cache;
  static std::array<std::once_flag, kMaxDevices> once;
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "fpquant: CUDA device index ", device, " out of range");
  std::call_once(once[device], [device] {
    cuda::GpuInfo g;
    cudaDeviceGetAttribute(&g.cc_major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&g.cc_minor, cudaDevAttrComputeCapabilityMinor, device);
    cudaDeviceGetAttribute(&g.num_sms, cudaDevAttrMultiProcessorCount, device);
    g.sm90_kernels = FPQUANT_SM90_KERNELS != 0;
    g.sm100_kernels = FPQUANT_SM100_KERNELS != 0;
    g.sm120_kernels = FPQUANT_SM120_KERNELS != 0;
    cache[device] = g;
  });
  return cache[device];
}

}  // namespace fpquant
