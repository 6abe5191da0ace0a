// matmul_generic.h: the NVFP4 alpha of the CUTLASS paths and the generic path's epilogue.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "cuda/matmul/matmul_generic.h"

namespace fpquant::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void alpha_kernel(const float* __restrict__ a_global, const float* __restrict__ b_global,
                             float* __restrict__ alpha) {
  *alpha = matmul_alpha(*a_global, *b_global);
}

// double -> float rounded to odd (truncation, last bit set when inexact): rounding that once more to a
// format with at least two fewer significand bits is the correct rounding of the double.
__device__ __forceinline__ float to_float_odd(double d) {
  const float t = __double2float_rz(d);
  if (isnan(d) || static_cast<double>(t) == d) return t;
  return __uint_as_float(__float_as_uint(t) | 1u);
}

__device__ __forceinline__ double bias_at(const void* bias, core::DType dt, int64_t n) {
  switch (dt) {
    case core::DType::kF32: return static_cast<const float*>(bias)[n];
    case core::DType::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(bias)[n]);
    case core::DType::kF16: return __half2float(static_cast<const __half*>(bias)[n]);
  }
  return 0.0;
}

template <typename O>
__global__ void __launch_bounds__(kThreads) finish_kernel(const double* __restrict__ acc, int64_t M, int64_t N,
                                                          const float* __restrict__ a_global,
                                                          const float* __restrict__ b_global, const void* bias,
                                                          core::DType bias_dtype, O* __restrict__ out) {
  const bool divide = a_global != nullptr;
  const double divisor = divide ? static_cast<double>(*a_global) * static_cast<double>(*b_global) : 1.0;
  const int64_t total = M * N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double v = acc[i];
    if (divide) v = v / divisor;
    if (bias != nullptr) v += bias_at(bias, bias_dtype, i % N);
    if constexpr (std::is_same_v<O, float>) {
      out[i] = __double2float_rn(v);
    } else if constexpr (std::is_same_v<O, __nv_bfloat16>) {
      out[i] = __float2bfloat16_rn(to_float_odd(v));
    } else {
      out[i] = __float2half_rn(to_float_odd(v));
    }
  }
}

template <typename O>
cudaError_t finish(const MatmulParams& p, const double* acc, cudaStream_t stream) {
  const int64_t total = p.M * p.N;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65536);
  const bool nv = p.format == core::Format::kNvFp4;
  finish_kernel<O><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      acc, p.M, p.N, nv ? p.a_global : nullptr, nv ? p.b_global : nullptr, p.bias, p.bias_dtype,
      static_cast<O*>(p.out));
  return cudaGetLastError();
}

}  // namespace

cudaError_t matmul_prepare_alpha(const MatmulParams& p, float* alpha, cudaStream_t stream) {
  if (p.a_global == nullptr || p.b_global == nullptr) return cudaErrorInvalidValue;
  alpha_kernel<<<1, 1, 0, stream>>>(p.a_global, p.b_global, alpha);
  return cudaGetLastError();
}

cudaError_t matmul_with_alpha(const MatmulParams& p, MatmulAlphaLauncher mx, MatmulAlphaLauncher nv,
                              cudaStream_t stream) {
  if (p.format == core::Format::kMxFp4) return mx(p, nullptr, stream);
  float* alpha = static_cast<float*>(p.workspace);
  if (alpha == nullptr || p.workspace_bytes < sizeof(float)) return cudaErrorInvalidValue;
  const cudaError_t err = matmul_prepare_alpha(p, alpha, stream);
  if (err != cudaSuccess) return err;
  return nv(p, alpha, stream);
}

cudaError_t matmul_generic_finish(const MatmulParams& p, const double* acc, cudaStream_t stream) {
  switch (p.out_dtype) {
    case core::DType::kF32: return finish<float>(p, acc, stream);
    case core::DType::kBF16: return finish<__nv_bfloat16>(p, acc, stream);
    case core::DType::kF16: return finish<__half>(p, acc, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fpquant::cuda
