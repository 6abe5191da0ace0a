// Hopper bulk tensor copies (TMA, sm_90) and the shared-memory mbarriers that track them. A copy is issued
// by one thread and lands asynchronously; the barrier's phase completes when the expected byte count has
// arrived, and waiting on that phase makes the bytes visible to the waiting threads (and to wgmma).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/wgmma.cuh"  // FPQUANT_WGMMA: the sm_90a feature guard

namespace fpquant::cuda {

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
#if FPQUANT_WGMMA
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}

// Makes barrier initialization visible to the async proxy (the TMA unit) before the first copy uses it.
__device__ __forceinline__ void mbar_init_fence() {
#if FPQUANT_WGMMA
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// The barriers of a producer / consumer ring of `stages` stages, 8 bytes apart: full[s] completes when the
// producer's expect-tx arrival and its copies landed (or, for producers that write the stage themselves,
// `producer_arrivals` arrivals); empty[s] when `consumer_warps` warps released the stage. Called by one
// thread, before the CTA-wide barrier that precedes the first use.
__device__ __forceinline__ void mbar_init_ring(uint32_t full, uint32_t empty, int stages, uint32_t consumer_warps,
                                               uint32_t producer_arrivals = 1) {
  for (int s = 0; s < stages; ++s) {
    mbar_init(full + 8 * s, producer_arrivals);
    mbar_init(empty + 8 * s, consumer_warps);
  }
  mbar_init_fence();
}

// The issuing thread's arrival, announcing `bytes` of copies that complete the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if FPQUANT_WGMMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}

// A plain arrival (consumers releasing a stage to the producer).
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
#if FPQUANT_WGMMA
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}

// Waits until the phase with the given parity (0, 1, 0, ... for successive uses) has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#if FPQUANT_WGMMA
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
#endif
}

// 2-D tile copy global -> shared through the tensor map at `tmap` (a __grid_constant__ kernel parameter):
// the box at element coordinates (c0 innermost, c1), completing on barrier `bar`. Out-of-range elements
// are written as zeros.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void* tmap, int c0, int c1, uint32_t bar) {
#if FPQUANT_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
#endif
}

// cuTensorMapEncodeTiled through the runtime's driver entry point (no link against libcuda).
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

inline EncodeTiled encode_tiled() {
  static EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
}

}  // namespace fpquant::cuda
