// Device-side group encoding shared by the quantization kernels: NaN-propagating absolute maximum, the
// NVFP4 element quotient without a per-element IEEE division, and E2M1 codes of 8 values packed in a word.
//
// Every function returns exactly the bits of the csrc/core scalar code (the CPU's semantics); they only
// choose instructions the H100 issues cheaply. Integer and compare/select instructions run at half the rate
// of float FMA-pipe instructions, and the first kernels were bound by them, so these helpers move work to
// float FMAs and integer multiply-adds.
#pragma once

#include <cstdint>

#include "core/fp_formats.h"

namespace fpquant::cuda {

// max that returns NaN when either input is NaN (PTX max.NaN, sm_80+). The maximum of |v| with it is NaN
// for a group holding a NaN and +inf for one holding an infinity: one instruction gives amax and finiteness.
__device__ __forceinline__ float max_nan(float a, float b) {
  float d;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
}

template <int N>
__device__ __forceinline__ float absmax_nan(const float* v) {
  float m = fabsf(v[0]);
#pragma unroll
  for (int i = 1; i < N; ++i) m = max_nan(m, fabsf(v[i]));
  return m;
}

// E2M1 codes of q[0..7] in one word, element k in nibble k (the canonical packing: element 2i in the low
// nibble of byte i). sign_src[k] supplies the sign bit (its sign equals q[k]'s, but q may have lost the sign
// of a zero; see nv_quotient). Per element: the grid point (core::e2m1_grid_point, bits 0x4B000000 + index)
// is summed with weight 16^k, whose carries out of bit 31 drop the constant parts;
// the sign comes from sign_src * 0 (+-0, only bit 31 set) moved to bit 4k+3 by a multiply-high.
__device__ __forceinline__ uint32_t pack8(const float (&q)[8], const float (&sign_src)[8]) {
  constexpr uint32_t kMagicBits = 0x4B000000u;
  // sum_k 16^k * kMagicBits mod 2^32: only k = 0 and k = 1 survive the wrap.
  constexpr uint32_t kOffset = kMagicBits + (kMagicBits << 4);
  uint32_t w = 0u - kOffset;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const uint32_t t = __float_as_uint(core::e2m1_grid_point(fabsf(q[k])));
    const uint32_t z = __float_as_uint(__fmul_rn(sign_src[k], 0.0f));
    // w += t * 16^k; w += high word of z * (2^(4k+4) + 1), which is 2^(4k+3) for z = 2^31 (the +1 only
    // adds z < 2^32 to the low word; it keeps the multiply on the FMA pipe instead of a shift).
    asm("mad.lo.u32 %0, %1, %2, %0;" : "+r"(w) : "r"(t), "r"(1u << (4 * k)));
    if (k < 7) {
      asm("mad.hi.u32 %0, %1, %2, %0;" : "+r"(w) : "r"(z), "r"((1u << (4 * k + 4)) | 1u));
    } else {
      w += z;
    }
  }
  return w;
}

// NVFP4 element quotient y / d, correctly rounded like core::div_rn, from rcp = RN(1/d): q0 = y * rcp, then
// two Newton corrections with exact FMA residuals (the second is Markstein's theorem: a quotient within one
// ULP corrected with the correctly rounded reciprocal rounds correctly). Valid while no intermediate
// overflows or underflows where it matters: the caller checks nv_fast_ok. Values far below the E2M1 grid
// (|q| < 2^-60) may be off in their last bits, which cannot change their code; a zero y may lose its sign,
// so pack8 takes signs from y.
__device__ __forceinline__ float nv_quotient(float y, float d, float rcp) {
  const float q0 = __fmul_rn(y, rcp);
  const float q1 = __fmaf_rn(__fmaf_rn(-q0, d, y), rcp, q0);
  return __fmaf_rn(__fmaf_rn(-q1, d, y), rcp, q1);
}

// The range where nv_quotient is exact for every element that can round to a non-zero code: d normal and
// far from both ends (residuals of quotients >= 2^-3 stay normal), and no quotient above 2^60.
__device__ __forceinline__ bool nv_fast_ok(float d, float amax) {
  return d >= 0x1p-90f && d <= 0x1p90f && amax <= __fmul_rn(d, 0x1p60f);
}

// Codes of 8 consecutive values of an MXFP4 group: q = y * 2^-e, exact scaling as in the core.
__device__ __forceinline__ uint32_t mx_encode8(const float (&y)[8], float inv) {
  float q[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) q[k] = __fmul_rn(y[k], inv);
  return pack8(q, q);
}

// Codes of 8 consecutive values of an NVFP4 group with divisor d (core::nv_block_divisor; 0 means zero
// codes) and rcp = RN(1/d); `fast` = nv_fast_ok for the group, otherwise IEEE division per element.
__device__ __forceinline__ uint32_t nv_encode8(const float (&y)[8], float d, float rcp, bool fast) {
  if (!(d > 0.0f)) return 0u;
  float q[8];
  if (fast) {
#pragma unroll
    for (int k = 0; k < 8; ++k) q[k] = nv_quotient(y[k], d, rcp);
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) q[k] = __fdiv_rn(y[k], d);
  }
  return pack8(q, y);
}

}  // namespace fpquant::cuda
