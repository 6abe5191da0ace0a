// cp.async (sm_80+): global -> shared copies that do not occupy registers, so a CTA can keep several tiles of
// input in flight while it computes on another.
#pragma once

#include <cstdint>

namespace fpquant::cuda {

// Copies 16 bytes, or writes 16 zero bytes when !valid (src-size 0: nothing is read from gmem).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}

// As cp_async16 (always valid), with the L2 fetching the whole aligned 256 bytes around gmem from DRAM: for
// streams whose neighbouring pieces other warps read soon after.
__device__ __forceinline__ void cp_async16_prefetch256(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}

// Copies 16 bytes and keeps them in the L1 (cp.async.ca): for data that other CTAs on the SM read soon too.
__device__ __forceinline__ void cp_async16_ca(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N committed groups are still pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace fpquant::cuda
