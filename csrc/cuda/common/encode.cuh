// Device-side group encoding shared by the quantization kernels: NaN-propagating absolute maximum, the
// NVFP4 element quotient without a per-element IEEE division, and E2M1 codes of 8 values packed in a word.
//
// Every function returns exactly the bits of the csrc/core scalar code (the CPU's semantics); they only
// choose instructions the H100 issues cheaply. Integer and compare/select instructions run at half the rate
// of float FMA-pipe instructions, and the first kernels were bound by them, so these helpers move work to
// float FMAs and integer multiply-adds.
#pragma once

#include <cstdint>

#include "core/scale_rules.h"

namespace fpquant::cuda {

// max that returns NaN when either input is NaN (PTX max.NaN, sm_80+). The maximum of |v| with it is NaN
// for a group holding a NaN and +inf for one holding an infinity: one instruction gives amax and finiteness.
__device__ __forceinline__ float max_nan(float a, float b) {
  float d;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
}

// As a balanced tree (depth log2 N instead of N - 1): max is associative, NaN-propagation included.
template <int N>
__device__ __forceinline__ float absmax_nan(const float* v) {
  static_assert(N >= 1 && (N & (N - 1)) == 0, "power of two");
  if constexpr (N == 1) {
    return fabsf(v[0]);
  } else {
    return max_nan(absmax_nan<N / 2>(v), absmax_nan<N / 2>(v + N / 2));
  }
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

// Sign bits of s[0..7] at bits 4k+3 (the sign bit of nibble k). PRMT with sign replication turns the top byte
// of a float into 0x00 or 0xFF; four of them gather even elements' signs into the bytes of one word, odd
// elements' into another, and two masks keep bit 3 (even) and bit 7 (odd) of each byte: 8 instructions for 8
// elements.
__device__ __forceinline__ uint32_t sign_nibbles(const float (&s)[8]) {
  const auto u = [&](int k) { return __float_as_uint(s[k]); };
  // selector nibble 0xB / 0xF: byte 3 of the first / second source, sign-replicated
  const uint32_t even = prmt(prmt(u(0), u(2), 0xFBFBu), prmt(u(4), u(6), 0xFBFBu), 0x5410u);
  const uint32_t odd = prmt(prmt(u(1), u(3), 0xFBFBu), prmt(u(5), u(7), 0xFBFBu), 0x5410u);
  return (even & 0x08080808u) | (odd & 0x80808080u);
}

// E2M1 codes of q[0..7] in one word, element k in nibble k (the canonical packing: element 2i in the low
// nibble of byte i). sign_src[k] supplies the sign bit (its sign equals q[k]'s, but q may have lost the sign
// of a zero; see nv_group). Per element: the grid point (core::e2m1_grid_point, bits 0x4B000000 + index) is
// summed with weight 16^k, whose carries out of bit 31 drop the constant parts; the signs come from
// sign_nibbles.
__device__ __forceinline__ uint32_t pack8(const float (&q)[8], const float (&sign_src)[8]) {
  constexpr uint32_t kMagicBits = 0x4B000000u;
  // sum_k 16^k * kMagicBits mod 2^32: only k = 0 and k = 1 survive the wrap.
  constexpr uint32_t kOffset = kMagicBits + (kMagicBits << 4);
  uint32_t w = 0u - kOffset;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const uint32_t t = __float_as_uint(core::e2m1_grid_point(fabsf(q[k])));
    asm("mad.lo.u32 %0, %1, %2, %0;" : "+r"(w) : "r"(t), "r"(1u << (4 * k)));
  }
  return w | sign_nibbles(sign_src);
}

// a / b, correctly rounded like core::div_rn, from rcp_b = RN(1/b): q0 = a * rcp_b and one Newton correction
// with the exact FMA residual a - b q0. This is the fast path of CUDA's IEEE div.rn.f32 (its refined MUFU
// reciprocal is RN(1/b), the value __frcp_rn returns), which is correctly rounded for every operand pair its
// FCHK range test passes, i.e. with all intermediates normal. |a| in [2^-80, 2^80] and b in [2^-40, 2^40]
// are well inside; callers test their ranges and fall back to IEEE division outside them. The GPU tests check
// the result against the CPU's division on quotients on and next to every E2M1 threshold.
__device__ __forceinline__ float div_by_rcp(float a, float b, float rcp_b) {
  const float q0 = __fmul_rn(a, rcp_b);
  return __fmaf_rn(__fmaf_rn(-q0, b, a), rcp_b, q0);
}

// RN(1/b) for a normal b with 2^-100 <= b <= 2^100: the in-range path of __frcp_rn (one MUFU.RCP, one Newton
// step with FMA). __frcp_rn wraps it in its own range test and an out-of-line fallback; callers here test the
// range once per group instead.
__device__ __forceinline__ float rcp_rn_in_range(float b) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(b));
  const float e = __fmaf_rn(r, b, -1.0f);
  return __fmaf_rn(r, -e, r);
}

// E4M3 conversions: hardware cvt (sm_89+), bit-identical to core::e4m3_encode_sat / e4m3_decode for the
// non-negative finite or NaN inputs used here (round to nearest even, satfinite clamps to 448, NaN -> 0x7F).
__device__ __forceinline__ uint8_t e4m3_encode_sat(float s) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint16_t r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(s));
  return static_cast<uint8_t>(r & 0xFFu);
#else
  return core::e4m3_encode_sat(s);
#endif
}

__device__ __forceinline__ float e4m3_decode(uint8_t c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint32_t h2;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(static_cast<uint16_t>(c)));
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h2 & 0xFFFFu)));
#else
  return core::e4m3_decode(c);
#endif
}

// Per-launch NVFP4 constants: the global scale g, RN(1/g), whether g is usable (finite, positive) and whether
// it is inside the range where nv_group's fast path is exact (2^-40 <= g <= 2^40).
struct NvGlobal {
  float g, rcp_g;
  bool ok, fast;
};

__device__ __forceinline__ NvGlobal nv_global(const float* gs) {
  const float g = __ldg(gs);
  const bool ok = core::is_finite(g) && g > 0.0f;
  return {g, ok ? __frcp_rn(g) : 0.0f, ok, g >= 0x1p-40f && g <= 0x1p40f};
}

// ---------------------------------------------------------------------------------------------------------
// Whole groups, as core::mx_quantize_block / core::nv_quantize_block compute them (same bits). The values
// are fetched 8 at a time through get(j, out) (values 8j .. 8j+7), twice: once for the statistics, once to
// encode. From registers that costs nothing; from shared memory it keeps register use low.

// NaN-propagating max |v| over the NJ * 8 values of a group.
template <int NJ, typename Get8>
__device__ __forceinline__ float group_absmax(Get8&& get) {
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    float b[8];
    get(j, b);
    amax = max_nan(amax, absmax_nan<8>(b));
  }
  return amax;
}

// Codes of an MXFP4 group, each element mapped to its quotient by scale(v) (zero codes for a non-finite group).
template <typename Get8, typename Scale>
__device__ __forceinline__ void mx_encode(Get8&& get, Scale&& scale, bool finite, uint32_t (&w)[4]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float q[8];
    get(j, q);
#pragma unroll
    for (int k = 0; k < 8; ++k) q[k] = scale(q[k]);
    w[j] = finite ? pack8(q, q) : 0u;
  }
}

template <core::MxRule RULE, typename Get8>
__device__ __forceinline__ uint8_t mx_group(Get8&& get, uint32_t (&w)[4]) {
  float amax = 0.0f;
  float part[4], part_sq[4];  // core::tree_sum<32> = its four 8-value subtrees, then pairs
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float b[8];
    get(j, b);
    amax = max_nan(amax, absmax_nan<8>(b));
    if constexpr (RULE == core::MxRule::kQuest) {
      float sq[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) sq[k] = core::mul_rn(b[k], b[k]);
      part[j] = core::tree_sum<8>(b);
      part_sq[j] = core::tree_sum<8>(sq);
    }
  }
  const bool finite = core::is_finite(amax);
  float sum = 0.0f, sumsq = 0.0f;
  if constexpr (RULE == core::MxRule::kQuest) {
    sum = core::add_rn(core::add_rn(part[0], part[1]), core::add_rn(part[2], part[3]));
    sumsq = core::add_rn(core::add_rn(part_sq[0], part_sq[1]), core::add_rn(part_sq[2], part_sq[3]));
  }
  const int e = core::mx_block_exponent(RULE, amax, sum, sumsq);
  const float inv = core::exp2i(-e);
  mx_encode(get, [inv](float v) { return __fmul_rn(v, inv); }, finite, w);
  return finite ? static_cast<uint8_t>(e + 127) : core::kE8M0Nan;
}

// mx_group of the products RN(c * v) for one c > 0 common to the group (a rotation whose columns share their
// scale, e.g. Hadamard), without forming the products: RN is monotone, so the group's amax is RN(c * max|v|),
// and RN(RN(c v) * 2^-e) = RN(v * (c 2^-e)) whenever both are normal (c 2^-e is exact); an element that is not
// lies far below the E2M1 grid either way (code 0 with its sign). Same bits as mx_group, one multiply per
// element less. Requires 2^-20 <= c <= 2^20; not for the QuEST rule (it sums the rounded products).
template <core::MxRule RULE, typename Get8>
__device__ __forceinline__ uint8_t mx_group_scaled(Get8&& get, float c, uint32_t (&w)[4]) {
  static_assert(RULE != core::MxRule::kQuest, "QuEST needs the rounded products");
  const float amax = __fmul_rn(c, group_absmax<4>(get));
  const bool finite = core::is_finite(amax);
  const int e = core::mx_block_exponent(RULE, amax, 0.0f, 0.0f);
  const float inv = core::exp2i(-e);
  if (e >= -100 && e <= 100) {
    const float m = __fmul_rn(c, inv);
    mx_encode(get, [m](float v) { return __fmul_rn(v, m); }, finite, w);
  } else {
    mx_encode(get, [c, inv](float v) { return __fmul_rn(__fmul_rn(v, c), inv); }, finite, w);
  }
  return finite ? static_cast<uint8_t>(e + 127) : core::kE8M0Nan;
}

// NVFP4 group by the CPU's code (core::nv_quantize_block, IEEE divisions). Out of line: only groups outside
// nv_group's fast-path range come here (non-finite or extreme amax, a global scale beyond 2^+-40, or a
// saturated scale leaving quotients above 2^60).
struct NvGroupOut {
  uint32_t w0, w1;
  uint32_t sc;
};

static __device__ __noinline__ NvGroupOut nv_group_exact(float4 v0, float4 v1, float4 v2, float4 v3, float g) {
  const float y[16] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w, v2.x, v2.y, v2.z, v2.w, v3.x, v3.y, v3.z, v3.w};
  uint8_t codes[8];  // canonical packing, so bytes 0-3 / 4-7 are pack8's words
  const uint8_t sc = core::nv_quantize_block(y, g, codes);
  NvGroupOut out{0u, 0u, sc};
  for (int i = 0; i < 4; ++i) {
    out.w0 |= static_cast<uint32_t>(codes[i]) << (8 * i);
    out.w1 |= static_cast<uint32_t>(codes[4 + i]) << (8 * i);
  }
  return out;
}

// Fast path, the same bits: the two per-group divisions (amax / 6 and E4M3(scale) / g) and the element
// quotients by reciprocal + one correction (div_by_rcp, exact inside its ranges), RN(1/d) by rcp_rn_in_range,
// no data-dependent branch but one per group into nv_group_exact. Its ranges: amax = 0 or 2^-80 <= amax <=
// 2^80 (amax / 6), 2^-40 <= g <= 2^40 (then d = E4M3 / g is 0 or in [2^-49, 2^49]) and amax <= 2^60 d (every
// quotient below 2^60; elements far below the E2M1 grid may lose their last bits, which cannot change their
// code, and pack8 takes signs from y). A zero divisor (scale underflow to E4M3 zero) gives zero codes.
template <typename Get8>
__device__ __forceinline__ uint8_t nv_group(Get8&& get, const NvGlobal& ng, uint32_t (&w)[2]) {
  const float amax = group_absmax<2>(get);
  const float s6 = div_by_rcp(amax, core::kE2M1Max, 1.0f / 6.0f);
  const uint8_t sc = e4m3_encode_sat(__fmul_rn(s6, ng.g));
  const float d = div_by_rcp(e4m3_decode(sc), ng.g, ng.rcp_g);
  // NaN amax fails every comparison; an infinite one fails the first.
  const bool fast = ng.fast && amax <= 0x1p80f && (amax >= 0x1p-80f || amax == 0.0f) &&
                    (amax <= __fmul_rn(d, 0x1p60f) || d == 0.0f);
  if (!fast) {
    float a[8], b[8];
    get(0, a);
    get(1, b);
    const NvGroupOut o = nv_group_exact(make_float4(a[0], a[1], a[2], a[3]), make_float4(a[4], a[5], a[6], a[7]),
                                        make_float4(b[0], b[1], b[2], b[3]), make_float4(b[4], b[5], b[6], b[7]),
                                        ng.g);
    w[0] = o.w0;
    w[1] = o.w1;
    return static_cast<uint8_t>(o.sc);
  }
  const float rcp = rcp_rn_in_range(d);
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    float y[8], q[8];
    get(j, y);
#pragma unroll
    for (int k = 0; k < 8; ++k) q[k] = div_by_rcp(y[k], d, rcp);
    w[j] = d > 0.0f ? pack8(q, y) : 0u;
  }
  return sc;
}

// ---------------------------------------------------------------------------------------------------------
// Several groups held in registers at once (the Hopper rotation kernel's accumulators): the same bits as
// mx_group_scaled / nv_group per group, arranged so independent groups interleave. All statistics first, one
// range test for all groups (a branch into the per-group code when any group is outside the fast range),
// then branch-free encoding with the non-finite / zero-divisor cases masked instead of branched around:
// each thread has only a few warps to hide latency behind, so the dependent per-group chains must overlap.
// get(g, j, out) fetches values 8j .. 8j+7 of group g.

// An all-ones / all-zeros mask the compiler cannot see through: with a visible select it turns `w & mask`
// back into a branch around the encoding (one per 8 values).
__device__ __forceinline__ uint32_t opaque_mask(bool keep) {
  uint32_t m;
  asm("mov.b32 %0, %1;" : "=r"(m) : "r"(keep ? 0xFFFFFFFFu : 0u));
  return m;
}

// MXFP4 (not QuEST) groups of 32 raw values v with one column scale c (mx_group_scaled's rule).
template <core::MxRule RULE, int NG, typename Get8>
__device__ __forceinline__ void mx_groups_scaled(Get8&& get, float c, uint32_t (&w)[NG][4], uint8_t (&sc)[NG]) {
  static_assert(RULE != core::MxRule::kQuest, "QuEST needs the rounded products");
  float m[NG];
  uint32_t keep[NG];
  bool in_range = true;
#pragma unroll
  for (int g = 0; g < NG; ++g) {
    float part[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float b[8];
      get(g, j, b);
      part[j] = absmax_nan<8>(b);
    }
    const float amax = __fmul_rn(c, absmax_nan<4>(part));
    const bool finite = core::is_finite(amax);
    const int e = core::mx_block_exponent(RULE, amax, 0.0f, 0.0f);
    in_range = in_range & (e >= -100) & (e <= 100);
    m[g] = __fmul_rn(c, core::exp2i(-e));
    keep[g] = opaque_mask(finite);
    sc[g] = finite ? static_cast<uint8_t>(e + 127) : core::kE8M0Nan;
  }
  if (!in_range) {
#pragma unroll
    for (int g = 0; g < NG; ++g)
      sc[g] = mx_group_scaled<RULE>([&](int j, float (&out)[8]) { get(g, j, out); }, c, w[g]);
    return;
  }
#pragma unroll
  for (int g = 0; g < NG; ++g)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float q[8];
      get(g, j, q);
#pragma unroll
      for (int k = 0; k < 8; ++k) q[k] = __fmul_rn(q[k], m[g]);
      w[g][j] = pack8(q, q) & keep[g];
    }
}

// NVFP4 groups of 16 values (nv_group's rule and ranges).
template <int NG, typename Get8>
__device__ __forceinline__ void nv_groups(Get8&& get, const NvGlobal& ng, uint32_t (&w)[NG][2], uint8_t (&sc)[NG]) {
  float d[NG];
  bool fast = ng.fast;
#pragma unroll
  for (int g = 0; g < NG; ++g) {
    float a[8], b[8];
    get(g, 0, a);
    get(g, 1, b);
    const float amax = max_nan(absmax_nan<8>(a), absmax_nan<8>(b));
    const float s6 = div_by_rcp(amax, core::kE2M1Max, 1.0f / 6.0f);
    sc[g] = e4m3_encode_sat(__fmul_rn(s6, ng.g));
    d[g] = div_by_rcp(e4m3_decode(sc[g]), ng.g, ng.rcp_g);
    // bitwise, not short-circuit: the compiler makes a branch of every && here
    fast = fast & (amax <= 0x1p80f) & ((amax >= 0x1p-80f) | (amax == 0.0f)) &
           ((amax <= __fmul_rn(d[g], 0x1p60f)) | (d[g] == 0.0f));
  }
  if (!fast) {
#pragma unroll
    for (int g = 0; g < NG; ++g) sc[g] = nv_group([&](int j, float (&out)[8]) { get(g, j, out); }, ng, w[g]);
    return;
  }
#pragma unroll
  for (int g = 0; g < NG; ++g) {
    const float rcp = rcp_rn_in_range(d[g]);
    const uint32_t keep = opaque_mask(d[g] > 0.0f);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float y[8], q[8];
      get(g, j, y);
#pragma unroll
      for (int k = 0; k < 8; ++k) q[k] = div_by_rcp(y[k], d[g], rcp);
      w[g][j] = pack8(q, y) & keep;
    }
  }
}

// Accessor for values already in registers.
template <int N>
struct RegValues {
  const float (&v)[N];
  int base;
  __device__ __forceinline__ void operator()(int j, float (&out)[8]) const {
#pragma unroll
    for (int k = 0; k < 8; ++k) out[k] = v[base + 8 * j + k];
  }
};

}  // namespace fpquant::cuda
