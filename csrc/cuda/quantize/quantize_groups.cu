// Quantization without rotation, dequantization and the NVFP4 global-scale reduction.
//
// One thread owns one scale group end to end and runs exactly the csrc/core code the CPU kernels run, so the
// results are bit-identical to the CPU reference by construction; the kernels only add the memory access
// (16-byte vector loads and stores, a grid-stride loop).
#include <type_traits>

#include "cuda/common/device_utils.cuh"
#include "cuda/common/encode.cuh"
#include "core/scale_layout.h"
#include "core/scale_rules.h"

namespace fpquant::cuda {
namespace {

constexpr int kThreads = 256;

template <int NW>
__device__ __forceinline__ void store_words(uint8_t* dst, const uint32_t (&w)[NW]) {
  if constexpr (NW == 4) {
    *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
    *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
  }
}

// The group math is cuda/common/encode.cuh's mx_group / nv_group: csrc/core's rules and bits, cheaper instructions.
template <typename T, Format F, core::MxRule RULE>
__global__ void __launch_bounds__(kThreads) quantize_groups_kernel(const T* __restrict__ x, int64_t n_groups,
                                                                   int64_t groups_per_row,
                                                                   const float* __restrict__ gs, ScaleLayout layout,
                                                                   uint8_t* __restrict__ codes,
                                                                   uint8_t* __restrict__ scales) {
  constexpr int G = group_size(F);
  NvGlobal ng{};
  if constexpr (F == Format::kNvFp4) ng = nv_global(gs);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_groups;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v[G];
    load_as_float<T, G>(x + i * G, v);
    uint32_t w[G / 8];
    uint8_t s;
    if constexpr (F == Format::kMxFp4) {
      s = mx_group<RULE>(RegValues<G>{v, 0}, w);
    } else {
      s = nv_group(RegValues<G>{v, 0}, ng, w);
    }
    store_words(codes + i * (G / 2), w);
    scales[core::scale_offset(i, groups_per_row, layout)] = s;
  }
}

template <typename O, Format F>
__global__ void __launch_bounds__(kThreads) dequantize_groups_kernel(const uint8_t* __restrict__ codes,
                                                                     const uint8_t* __restrict__ scales,
                                                                     const float* __restrict__ gs, ScaleLayout layout,
                                                                     int64_t n_groups, int64_t groups_per_row,
                                                                     O* __restrict__ out) {
  constexpr int G = group_size(F);
  const float g = F == Format::kNvFp4 ? __ldg(gs) : 0.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_groups;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint8_t sc =
        scales[core::scale_offset(i, groups_per_row, layout)];
    const float m = F == Format::kMxFp4 ? core::mx_block_multiplier(sc) : core::nv_block_multiplier(sc, g);
    uint32_t w[G / 8];
    if constexpr (G == 32) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(codes + i * 16));
      w[0] = raw.x; w[1] = raw.y; w[2] = raw.z; w[3] = raw.w;
    } else {
      const uint2 raw = __ldg(reinterpret_cast<const uint2*>(codes + i * 8));
      w[0] = raw.x; w[1] = raw.y;
    }
    // 8 outputs (one word of codes) at a time, stored as one vector of O.
#pragma unroll
    for (int j = 0; j < G / 8; ++j) {
      O vals[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) store_float(&vals[k], core::mul_rn(core::e2m1_decode((w[j] >> (4 * k)) & 0xF), m));
      O* dst = out + i * G + j * 8;
      if constexpr (sizeof(O) == 4) {
        reinterpret_cast<uint4*>(dst)[0] = reinterpret_cast<const uint4*>(vals)[0];
        reinterpret_cast<uint4*>(dst)[1] = reinterpret_cast<const uint4*>(vals)[1];
      } else {
        reinterpret_cast<uint4*>(dst)[0] = reinterpret_cast<const uint4*>(vals)[0];
      }
    }
  }
}

// amax over n elements; non-finite elements set a flag instead (max of |x| over finite values is exact and
// order-free, so the atomics give a deterministic result).
template <typename T>
__global__ void __launch_bounds__(kThreads) amax_kernel(const T* __restrict__ x, int64_t n, uint32_t* scratch) {
  float amax = 0.0f;
  bool finite = true;
  constexpr int V = 16 / sizeof(T);
  const int64_t n_vec = (reinterpret_cast<uintptr_t>(x) % 16 == 0) ? n / V : 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t i = tid; i < n_vec; i += stride) {
    float v[V];
    unpack16<T>(__ldg(reinterpret_cast<const uint4*>(x) + i), v);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      finite = finite && core::is_finite(v[k]);
      amax = core::max_f(amax, core::abs_f(v[k]));
    }
  }
  for (int64_t i = n_vec * V + tid; i < n; i += stride) {
    const float v = to_float(x[i]);
    finite = finite && core::is_finite(v);
    amax = core::max_f(amax, core::abs_f(v));
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) amax = core::max_f(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  const bool all_finite = __all_sync(0xffffffffu, finite);
  if ((threadIdx.x & 31) == 0) {
    // Non-negative floats order like their bit patterns.
    atomicMax(scratch, core::f32_bits(amax));
    if (!all_finite) atomicOr(scratch + 1, 1u);
  }
}

__global__ void global_scale_finalize_kernel(const uint32_t* scratch, float* out) {
  const float amax = scratch[1] ? core::bits_f32(0x7FC00000u) : core::bits_f32(scratch[0]);
  *out = core::nv_global_scale_from_amax(amax);
}

template <typename Fn>
cudaError_t with_dtype(DType d, Fn&& fn) {
  switch (d) {
    case DType::kF32: return fn(float{});
    case DType::kBF16: return fn(__nv_bfloat16{});
    default: return fn(__half{});
  }
}

}  // namespace

cudaError_t quantize_groups(const QuantizeParams& p, cudaStream_t stream) {
  const int G = group_size(p.format);
  const int64_t n_groups = p.rows * (p.K / G);
  const unsigned grid = grid_for(n_groups, kThreads);
  return with_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    return with_format_rule(p.format, p.rule, [&](auto f, auto rule) {
      quantize_groups_kernel<T, decltype(f)::value, decltype(rule)::value><<<grid, kThreads, 0, stream>>>(
          static_cast<const T*>(p.x), n_groups, p.K / G, p.global_scale, p.layout, p.codes, p.scales);
      return cudaGetLastError();
    });
  });
}

cudaError_t dequantize(const DequantizeParams& p, cudaStream_t stream) {
  const int G = group_size(p.format);
  const int64_t n_groups = p.rows * (p.K / G);
  const unsigned grid = grid_for(n_groups, kThreads);
  return with_dtype(p.out_dtype, [&](auto t) {
    using O = decltype(t);
    return with_format(p.format, [&](auto f) {
      dequantize_groups_kernel<O, decltype(f)::value><<<grid, kThreads, 0, stream>>>(
          p.codes, p.scales, p.global_scale, p.layout, n_groups, p.K / G, static_cast<O*>(p.out));
      return cudaGetLastError();
    });
  });
}

cudaError_t global_scale(const void* x, DType dtype, int64_t n, uint32_t* scratch, float* out, cudaStream_t stream) {
  cudaError_t err = with_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    amax_kernel<T><<<grid_for(n / (16 / sizeof(T)) + 1, kThreads, 8), kThreads, 0, stream>>>(
        static_cast<const T*>(x), n, scratch);
    return cudaGetLastError();
  });
  if (err != cudaSuccess) return err;
  global_scale_finalize_kernel<<<1, 1, 0, stream>>>(scratch, out);
  return cudaGetLastError();
}

}  // namespace fpquant::cuda
