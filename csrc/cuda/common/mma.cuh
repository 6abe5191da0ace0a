// Tensor-core building blocks shared by the kernels: mma.sync m16n8k16 (fp32 accumulation), ldmatrix, and
// packing two floats into one register of the 16-bit tensor-core type (AT: __nv_bfloat16 or __half).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace fpquant::cuda {

// d += A (16x16, row) * B (16x8, col). Register layout (PTX ISA), lane = 4g + q: a0 = (row g, k 2q..2q+1),
// a1 = (row g+8, same k), a2 = (row g, k 2q+8..2q+9), a3 = (row g+8, same k); b0 = (k 2q..2q+1, n g),
// b1 = (k 2q+8..2q+9, n g); d0, d1 = (row g, n 2q..2q+1), d2, d3 = (row g+8, same n).
template <typename AT>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<AT, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// (lo, hi) rounded to AT, lo in the low 16 bits (the lower k / lower column of a fragment pair).
template <typename AT>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<AT, __nv_bfloat16>) {
    __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&p);
  } else {
    __half2 p = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&p);
  }
}

// x rounded to AT and back: the "hi" part of a hi + lo split.
template <typename AT>
__device__ __forceinline__ float round_to(float x) {
  if constexpr (std::is_same_v<AT, __nv_bfloat16>) return __bfloat162float(__float2bfloat16_rn(x));
  else return __half2float(__float2half_rn(x));
}

}  // namespace fpquant::cuda
