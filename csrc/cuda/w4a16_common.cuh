// Pieces shared by the two W4A16 kernels (w4a16_gemm.cu for 17-64 rows, w4a16_decode.cu for up to 16):
// byte permutes, 16-bit pair arithmetic in the tensor-core type, group scales and the split-K reduction.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "core/fp_formats.h"
#include "cuda/device_utils.cuh"
#include "cuda/w4a16.h"

namespace fpquant::cuda::w4a16 {

// prmt in its default mode: a selector nibble with bit 3 set replicates the sign bit of the chosen byte.
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

template <typename AT>
__device__ __forceinline__ uint32_t splat(float s) {  // (s, s) as two 16-bit values
  if constexpr (std::is_same_v<AT, __nv_bfloat16>) {
    __nv_bfloat162 p = __float2bfloat162_rn(s);
    return *reinterpret_cast<uint32_t*>(&p);
  } else {
    __half2 p = __float2half2_rn(s);
    return *reinterpret_cast<uint32_t*>(&p);
  }
}

template <typename AT>
__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
  if constexpr (std::is_same_v<AT, __nv_bfloat16>) {
    __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  } else {
    __half2 r = __hmul2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
}

template <Format F>
__device__ __forceinline__ float group_scale(uint8_t code) {
  return F == Format::kMxFp4 ? core::e8m0_decode(code) : core::e4m3_decode(code);
}

__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// Split-K: partials [splits, M, N] (float32, already free of any kernel-internal scaling) summed in split
// order (deterministic), then the NVFP4 global scale and the bias.
template <typename AT, Format F>
__global__ void __launch_bounds__(256) splitk_reduce_kernel(W4A16Params p) {
  const float inv_g = F == Format::kNvFp4 ? 1.0f / __ldg(p.global_scale) : 1.0f;
  const int64_t total = p.M * p.N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < p.splits; ++s) v += p.workspace[s * total + i];
    if (F == Format::kNvFp4) v *= inv_g;
    if (p.bias) v += to_float(static_cast<const AT*>(p.bias)[i % p.N]);
    store_float(static_cast<AT*>(p.out) + i, v);
  }
}

template <typename AT, Format F>
cudaError_t reduce_splits(const W4A16Params& p, cudaStream_t stream) {
  if (p.splits == 1) return cudaSuccess;
  splitk_reduce_kernel<AT, F><<<grid_for(p.M * p.N, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace fpquant::cuda::w4a16
