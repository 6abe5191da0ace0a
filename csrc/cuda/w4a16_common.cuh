// Pieces shared by the W4A16 kernels (w4a16_decode.cu, w4a16_gemm.cu, w4a16_wgmma.cu): byte permutes, the
// E2M1 table and arithmetic decodes with their group-scale multipliers, 16-bit pair arithmetic in the
// tensor-core type, group scales and the split-K reduction.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "core/fp_formats.h"
#include "cuda/device_utils.cuh"
#include "cuda/mma.cuh"
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

// Byte tables of the E2M1 magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6} in the 16-bit type: low bytes (entries 0-3,
// 4-7) and high bytes.
template <typename AT> struct E2M1Table;
template <> struct E2M1Table<__nv_bfloat16> {  // 0000 3F00 3F80 3FC0 4000 4040 4080 40C0
  static constexpr uint32_t lo0 = 0xC0800000u, lo1 = 0xC0804000u, hi0 = 0x3F3F3F00u, hi1 = 0x40404040u;
};
template <> struct E2M1Table<__half> {  // 0000 3800 3C00 3E00 4000 4200 4400 4600
  static constexpr uint32_t lo0 = 0u, lo1 = 0u, hi0 = 0x3E3C3800u, hi1 = 0x46444240u;
};

// 8 E2M1 codes (one 32-bit word, code i in nibble i) -> 4 words of two 16-bit values (code 2i low half).
template <typename AT>
__device__ __forceinline__ void decode8(uint32_t w, uint32_t* o) {
  using T = E2M1Table<AT>;
  const uint32_t sa = w & 0x7777u, sb = (w >> 16) & 0x7777u;
  const uint32_t la = prmt(T::lo0, T::lo1, sa), ha = prmt(T::hi0, T::hi1, sa);
  const uint32_t lb = prmt(T::lo0, T::lo1, sb), hb = prmt(T::hi0, T::hi1, sb);
  // Sign bytes: msb of byte k of (w << 4) is the sign of code 2k, msb of byte k of w the sign of code 2k+1.
  const uint32_t v = w << 4;
  o[0] = prmt(la, ha, 0x5140u) | (prmt(v, w, 0xC080u) & 0x80008000u);
  o[1] = prmt(la, ha, 0x7362u) | (prmt(v, w, 0xD090u) & 0x80008000u);
  o[2] = prmt(lb, hb, 0x5140u) | (prmt(v, w, 0xE0A0u) & 0x80008000u);
  o[3] = prmt(lb, hb, 0x7362u) | (prmt(v, w, 0xF0B0u) & 0x80008000u);
}

template <Format F>
__device__ __forceinline__ float group_scale(uint8_t code) {
  return F == Format::kMxFp4 ? core::e8m0_decode(code) : core::e4m3_decode(code);
}

// Two E4M3 codes (low byte first) -> two fp16 values, exactly (every E4M3 value, NaN included, is an fp16
// value), by the hardware conversion (sm_89+).
__device__ __forceinline__ __half2 e4m3x2_to_half2(uint16_t pair) {
  uint32_t r;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(r) : "h"(pair));
  return *reinterpret_cast<__half2*>(&r);
}

template <typename AT>
constexpr bool kBf16 = std::is_same_v<AT, __nv_bfloat16>;

// 8 codes (nibble i of w) -> o[j] = (code j, code j+4) as 16-bit patterns worth code * 2^-126 (bf16) or
// code * 2^-14 (fp16). Multiplying the nibble by (2^a + 2^b) places one copy with its magnitude in the
// right bits and another with its sign bit at bit 15 (halves never carry into each other: 0xF * 0x1040 <
// 2^16); a mask keeps those bits. fp16 needs the sign 3 bits further than the magnitude's top: it is moved
// from bit 12 to 15 by adding 7 times itself.
template <typename AT>
__device__ __forceinline__ void e2m1_bits8(uint32_t w, uint32_t (&o)[4]) {
  const uint32_t v = w >> 8;  // nibbles 2, 3 (low half) and 6, 7 (high half) at the bottom
  if constexpr (kBf16<AT>) {
    o[0] = ((w & 0x000F000Fu) * 0x1040u) & 0x81C081C0u;
    o[1] = ((w & 0x00F000F0u) * 0x0104u) & 0x81C081C0u;
    o[2] = ((v & 0x000F000Fu) * 0x1040u) & 0x81C081C0u;
    o[3] = ((v & 0x00F000F0u) * 0x0104u) & 0x81C081C0u;
  } else {
    const uint32_t t[4] = {(w & 0x000F000Fu) << 9, (w & 0x00F000F0u) << 5, (v & 0x000F000Fu) << 9,
                           (v & 0x00F000F0u) << 5};
#pragma unroll
    for (int j = 0; j < 4; ++j) o[j] = t[j] + (t[j] & 0x10001000u) * 7u;
  }
}

// The same for the two codes of one byte b (b < 256; code 2i low nibble, code 2i + 1 high nibble) -> (low
// nibble, high nibble) as one pair: b * 0x1001 puts the high nibble 12 bits above the low one without carry,
// so one mask leaves them 16 bits apart, as e2m1_bits8 needs them. This is the wgmma kernel's decode: its
// register A operand pairs k = 2i, 2i + 1, the two codes of canonical byte i.
template <typename AT>
__device__ __forceinline__ uint32_t e2m1_byte_bits(uint32_t b) {
  if constexpr (kBf16<AT>) {
    return (((b * 0x1001u) & 0x000F000Fu) * 0x1040u) & 0x81C081C0u;
  } else {
    const uint32_t t = (b * 0x200200u) & 0x1E001E00u;  // the nibbles at bits 9-12 of each half
    return t + (t & 0x10001000u) * 7u;
  }
}

// The factor between a code and its e2m1_bits8 / e2m1_byte_bits pattern.
template <typename AT>
constexpr float kCodeUnit = kBf16<AT> ? 0x1p126f : 0x1p14f;

// Group-scale multipliers (m1, then m2 when TWO) that turn those patterns into code * scale with a
// single rounding (none where the product is representable). One multiply where kCodeUnit * scale fits the
// 16-bit type: MXFP4 with E8M0 <= 128 (bf16: 2^(E-1), an integer pattern; fp16: 2^(E-113), exact down to
// fp16's subnormals, and 0 only where every weight of the group rounds to 0 anyway), and NVFP4 on bf16 as
// scale * 2^118, i.e. code * scale * 2^-8, which the epilogue undoes (kNvUnscale). Larger MXFP4 scales (and
// NaN) take two: kCodeUnit, then the scale; a warp takes the two-multiply path for a whole chunk when any of
// its lanes needs it, with (one-multiply value, 1) for the others. NVFP4 on fp16 always takes two (code *
// scale * 2^-8 could fall below fp16's normal range). MXFP4: one code per row (sc[0]); NVFP4: two, for
// words 0-1 and 2-3.
template <typename AT, Format F>
constexpr bool kAlwaysTwo = F == Format::kNvFp4 && !kBf16<AT>;

template <typename AT, Format F, bool TWO>
__device__ __forceinline__ void multipliers(const uint8_t (&sc)[2], uint32_t (&m1)[2], uint32_t (&m2)[2]) {
  if constexpr (F == Format::kMxFp4) {
    const uint32_t e = sc[0];
    const uint32_t one = kBf16<AT> ? (e + 126u) * 0x00800080u : splat<AT>(core::e8m0_decode(sc[0]) * kCodeUnit<AT>);
    if constexpr (TWO) {
      const bool small = e <= 128u;
      m1[0] = small ? one : splat<AT>(kCodeUnit<AT>);
      m2[0] = small ? splat<AT>(1.0f) : splat<AT>(core::e8m0_decode(sc[0]));
    } else {
      m1[0] = one;
    }
  } else {
    const __half2 h = e4m3x2_to_half2(static_cast<uint16_t>(sc[0] | (sc[1] << 8)));
    if constexpr (kBf16<AT>) {
      const float2 f = __half22float2(h);
      m1[0] = splat<AT>(f.x * 0x1p118f);
      m1[1] = splat<AT>(f.y * 0x1p118f);
    } else {
      const uint32_t hv = *reinterpret_cast<const uint32_t*>(&h);
      m1[0] = m1[1] = splat<AT>(kCodeUnit<AT>);
      m2[0] = prmt(hv, 0, 0x1010u);
      m2[1] = prmt(hv, 0, 0x3232u);
    }
  }
}

template <typename AT, bool TWO>
__device__ __forceinline__ uint32_t apply_scale(uint32_t bits, uint32_t m1, uint32_t m2) {
  const uint32_t r = hmul2<AT>(bits, m1);
  return TWO ? hmul2<AT>(r, m2) : r;
}

template <typename AT, Format F>
constexpr float kNvUnscale = F == Format::kNvFp4 && kBf16<AT> ? 256.0f : 1.0f;

__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// Epilogue store of the sums (v0, v1) of row m, features n and n + 1, for kernels whose grid.z is the split:
// float32 partials of this split when splits > 1 (reduce_splits applies the global scale and the bias), else
// times inv_g (1 / the NVFP4 global scale), plus the bias, rounded to AT.
template <typename AT, Format F>
__device__ __forceinline__ void store_pair(const W4A16Params& p, int64_t m, int64_t n, float v0, float v1, float inv_g) {
  if (p.splits > 1) {
    *reinterpret_cast<float2*>(p.workspace + (static_cast<int64_t>(blockIdx.z) * p.M + m) * p.N + n) =
        make_float2(v0, v1);
    return;
  }
  if (F == Format::kNvFp4) {
    v0 *= inv_g;
    v1 *= inv_g;
  }
  if (p.bias) {
    v0 += to_float(static_cast<const AT*>(p.bias)[n]);
    v1 += to_float(static_cast<const AT*>(p.bias)[n + 1]);
  }
  *reinterpret_cast<uint32_t*>(static_cast<AT*>(p.out) + m * p.N + n) = pack2<AT>(v0, v1);
}

// Split-K factor shared by the kernels' heuristics: doubled while the grid (ctas x splits) stays within
// `target` CTAs and the factor at most `max_splits` (each kernel's bound on how little K a split may get).
inline int split_k(int64_t ctas, int64_t target, int64_t max_splits) {
  int s = 1;
  while (ctas * s * 2 <= target && s * 2 <= max_splits) s *= 2;
  return s;
}

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
