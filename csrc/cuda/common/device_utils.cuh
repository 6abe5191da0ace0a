// Small device helpers shared by the CUDA kernels: vector loads with conversion to float, launch sizing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "cuda/quantize/quantize.h"

namespace fpquant::cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// Convert the 16 bytes in `w` (8 x 16-bit or 4 x 32-bit elements) to floats; returns how many were written.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& w, float* out) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    // bfloat16 is the top half of a float32: one shift or mask per element.
    const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = __uint_as_float(u[i] << 16);
      out[2 * i + 1] = __uint_as_float(u[i] & 0xFFFF0000u);
    }
  } else {
    const T* e = reinterpret_cast<const T*>(&w);
    constexpr int n = 16 / sizeof(T);
#pragma unroll
    for (int i = 0; i < n; ++i) out[i] = to_float(e[i]);
  }
}

// Load N consecutive elements of T starting at a 16-byte aligned address, as float32 (exact widening).
template <typename T, int N>
__device__ __forceinline__ void load_as_float(const T* __restrict__ src, float* v) {
  constexpr int per_vec = 16 / sizeof(T);
  static_assert(N % per_vec == 0, "N must fill whole 16-byte vectors");
  const uint4* p = reinterpret_cast<const uint4*>(src);
  uint4 raw[N / per_vec];
#pragma unroll
  for (int i = 0; i < N / per_vec; ++i) raw[i] = __ldg(p + i);  // all loads in flight before use
#pragma unroll
  for (int i = 0; i < N / per_vec; ++i) unpack16<T>(raw[i], v + i * per_vec);
}

__device__ __forceinline__ void store_float(float* dst, float v) { *dst = v; }
__device__ __forceinline__ void store_float(__nv_bfloat16* dst, float v) { *dst = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store_float(__half* dst, float v) { *dst = __float2half_rn(v); }

inline int num_sms() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 132;
  return sms;
}

// Launch-time dispatch to compile-time template arguments, shared by the kernel launchers:
// fn(std::integral_constant<Format, F>) and, with the scale rule, fn(format constant, rule constant). NVFP4 has
// a single rule; its kernels are instantiated with kFloor in the rule slot.
template <typename Fn>
cudaError_t with_format(Format f, Fn&& fn) {
  return f == Format::kMxFp4 ? fn(std::integral_constant<Format, Format::kMxFp4>{})
                             : fn(std::integral_constant<Format, Format::kNvFp4>{});
}

template <typename Fn>
cudaError_t with_format_rule(Format f, core::MxRule r, Fn&& fn) {
  using Rule = core::MxRule;
  if (f == Format::kNvFp4)
    return fn(std::integral_constant<Format, Format::kNvFp4>{}, std::integral_constant<Rule, Rule::kFloor>{});
  const std::integral_constant<Format, Format::kMxFp4> mx{};
  switch (r) {
    case Rule::kFloor: return fn(mx, std::integral_constant<Rule, Rule::kFloor>{});
    case Rule::kCeil: return fn(mx, std::integral_constant<Rule, Rule::kCeil>{});
    default: return fn(mx, std::integral_constant<Rule, Rule::kQuest>{});
  }
}

// Grid for a grid-stride loop over `work` items with `per_block` items per block (threads, or tiles): at most
// `blocks_per_sm` blocks per SM, never more than the work needs, at least one.
inline unsigned grid_for(int64_t work, int per_block, int blocks_per_sm = 16) {
  const int64_t need = (work + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(num_sms()) * blocks_per_sm;
  return static_cast<unsigned>(need < cap ? (need > 0 ? need : 1) : cap);
}

// Blocks of `kernel` that are resident on one SM at once with `threads` threads and `smem` bytes of dynamic
// shared memory (at least one).
template <typename Kernel>
int resident_blocks(Kernel kernel, int threads, size_t smem) {
  int n = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem);
  return n > 0 ? n : 1;
}

// Programmatic dependent launch (sm_90+). A kernel launched by launch_dependent may start while the previous
// kernel in the stream is still finishing; it must call grid_dependency_wait before reading anything that
// kernel may have written (and before writing anything it may still read). Without the launch attribute, or
// on targets before sm_90, the wait is a no-op.
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// `cluster`: thread block cluster dimensions (sm_90+; grid a multiple of them), none when all are 1.
template <typename... Params, typename... Args>
cudaError_t launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             dim3 cluster, Args&&... args) {
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  attr[1].id = cudaLaunchAttributeClusterDimension;
  attr[1].val.clusterDim.x = cluster.x;
  attr[1].val.clusterDim.y = cluster.y;
  attr[1].val.clusterDim.z = cluster.z;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = cluster.x * cluster.y * cluster.z > 1 ? 2 : 1;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

// Thread block clusters (sm_90+; the targets we build). Every thread of the cluster arrives and waits;
// shared-memory writes before it are visible to the cluster's reads after it.
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}

// The float at `p` (this CTA's shared memory) in the shared memory of the cluster's CTA `rank`.
__device__ __forceinline__ float cluster_load(const float* p, int rank) {
  float v = 0.0f;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint32_t local = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(remote) : "memory");
#endif
  return v;
}

}  // namespace fpquant::cuda
