// Pieces shared by the W4A16 kernels (w4a16_decode.cu, w4a16_mma.cu, w4a16_wgmma_sm90.cu): the arithmetic E2M1
// decode of a packed atom (core/w4a16_layout.h) with its group-scale multipliers, 16-bit pair arithmetic in
// the tensor-core type, and the split-K reduction.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "core/fp_formats.h"
#include "cuda/common/device_utils.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/w4a16/w4a16.h"

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

// The factor between a code and its e2m1_bits8 pattern.
template <typename AT>
constexpr float kCodeUnit = kBf16<AT> ? 0x1p126f : 0x1p14f;

// Group-scale multipliers (m1, then m2 when TWO) that turn those patterns into code * scale with a
// single rounding (none where the product is representable). One multiply where kCodeUnit * scale fits the
// 16-bit type: MXFP4 with E8M0 <= 128 (bf16: 2^(E-1), an integer pattern; fp16: 2^(E-113), exact down to
// fp16's subnormals, and 0 only where every weight of the group rounds to 0 anyway), and NVFP4 on bf16 as
// scale * 2^118, i.e. code * scale * 2^-8, which the epilogue undoes (kNvUnscale). Larger MXFP4 scales (and
// NaN) take two: kCodeUnit, then the scale; a warp takes the two-multiply path for a whole chunk when any of
// its lanes needs it, with (one-multiply value, 1) for the others. NVFP4 on fp16 always takes two (code *
// scale * 2^-8 could fall below fp16's normal range). MXFP4: one code (sc[0]); NVFP4: two, for
// two neighbouring groups (row_multipliers: the two k-steps of a packed word).
template <typename AT, Format F>
constexpr bool kAlwaysTwo = F == Format::kNvFp4 && !kBf16<AT>;

// NVFP4: the group-dependent multipliers of two E4M3 scale codes (low byte first): on bf16, scale * 2^118
// (the first and only multiply, see multipliers); on fp16, the scale (the second multiply, after the code
// unit).
template <typename AT>
__device__ __forceinline__ void nv_pair_multipliers(uint16_t pair, uint32_t (&m)[2]) {
  const __half2 h = e4m3x2_to_half2(pair);
  if constexpr (kBf16<AT>) {
    const float2 f = __half22float2(h);
    m[0] = splat<AT>(f.x * 0x1p118f);
    m[1] = splat<AT>(f.y * 0x1p118f);
  } else {
    const uint32_t hv = *reinterpret_cast<const uint32_t*>(&h);
    m[0] = prmt(hv, 0, 0x1010u);
    m[1] = prmt(hv, 0, 0x3232u);
  }
}

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
    uint32_t m[2];
    nv_pair_multipliers<AT>(static_cast<uint16_t>(sc[0] | (sc[1] << 8)), m);
    if constexpr (kBf16<AT>) {
      m1[0] = m[0];
      m1[1] = m[1];
    } else {
      m1[0] = m1[1] = splat<AT>(kCodeUnit<AT>);
      m2[0] = m[0];
      m2[1] = m[1];
    }
  }
}

template <typename AT, bool TWO>
__device__ __forceinline__ uint32_t apply_scale(uint32_t bits, uint32_t m1, uint32_t m2) {
  const uint32_t r = hmul2<AT>(bits, m1);
  return TWO ? hmul2<AT>(r, m2) : r;
}

// Multipliers of one row of a packed atom (core/w4a16_layout.h), whose 64/G scale bytes are `bytes` (byte i:
// group i): m1[s2], m2[s2] for word s2 of the row, k-steps 2 s2 and 2 s2 + 1 (index [i] for k-step 2 s2 + i;
// MXFP4 covers both with its group s2, NVFP4 has groups 2 s2 and 2 s2 + 1).
template <typename AT, Format F, bool TWO>
__device__ __forceinline__ void row_multipliers(uint32_t bytes, uint32_t (&m1)[2][2], uint32_t (&m2)[2][2]) {
#pragma unroll
  for (int s2 = 0; s2 < 2; ++s2) {
    uint8_t sc[2];
    if constexpr (F == Format::kMxFp4) {
      sc[0] = sc[1] = static_cast<uint8_t>(bytes >> (8 * s2));
    } else {
      sc[0] = static_cast<uint8_t>(bytes >> (16 * s2));
      sc[1] = static_cast<uint8_t>(bytes >> (16 * s2 + 8));
    }
    multipliers<AT, F, TWO>(sc, m1[s2], m2[s2]);
    if constexpr (F == Format::kMxFp4) {
      m1[s2][1] = m1[s2][0];
      m2[s2][1] = m2[s2][0];
    }
  }
}

// MXFP4 scales that need the two-multiply path (E8M0 > 128, NaN), bytewise: bit 7 of each byte of the result
// is set for such a byte of w (its low 7 bits plus 0x7F reach bit 7 exactly when they are not all zero, no
// carry leaving the byte, and bit 7 of the byte itself is set).
__device__ __forceinline__ uint32_t mx_big_bytes(uint32_t w) { return ((w & 0x7F7F7F7Fu) + 0x7F7F7F7Fu) & w & 0x80808080u; }
// For a packed atom row's 2 scale bytes, and for 16 scale bytes at once.
__device__ __forceinline__ bool mx_needs_two(uint32_t bytes) { return mx_big_bytes(bytes & 0xFFFFu) != 0; }
__device__ __forceinline__ bool mx_any_big(const uint4& v) {
  return (mx_big_bytes(v.x) | mx_big_bytes(v.y) | mx_big_bytes(v.z) | mx_big_bytes(v.w)) != 0;
}

// A lane's 16 bytes of a packed atom -> its scaled fragment registers for the atom's 4 k-steps: f[s][0..3] is
// the mma.m16n8k16 / wgmma A fragment (a0a1, a2a3, a4a5, a6a7: rows g, g + 8 at k 16s + 2q, then at 16s + 2q
// + 8) and, read as (f[s][h], f[s][h + 2]), the m16n8k16 B fragment (b0b1, b2b3) of column g of row half h.
// m1, m2: the multipliers (see multipliers) of rows g (h = 0) and g + 8 (h = 1), [h][s2][i] for k-step
// 2 s2 + i.
template <typename AT, bool TWO>
__device__ __forceinline__ void decode_atom_scaled(const uint4& c, const uint32_t (&m1)[2][2][2],
                                                   const uint32_t (&m2)[2][2][2], uint32_t (&f)[4][4]) {
  const uint32_t w[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int s2 = 0; s2 < 2; ++s2) {
      uint32_t o[4];
      e2m1_bits8<AT>(w[2 * h + s2], o);
#pragma unroll
      for (int j = 0; j < 4; ++j) o[j] = apply_scale<AT, TWO>(o[j], m1[h][s2][j / 2], m2[h][s2][j / 2]);
      f[2 * s2][h] = o[0];
      f[2 * s2][h + 2] = o[1];
      f[2 * s2 + 1][h] = o[2];
      f[2 * s2 + 1][h + 2] = o[3];
    }
}

// The multipliers of decode_atom_scaled from the scale bytes s_lo, s_hi of rows g and g + 8.
template <typename AT, Format F, bool TWO>
__device__ __forceinline__ void atom_multipliers(uint32_t s_lo, uint32_t s_hi, uint32_t (&m1)[2][2][2],
                                                 uint32_t (&m2)[2][2][2]) {
  row_multipliers<AT, F, TWO>(s_lo, m1[0], m2[0]);
  row_multipliers<AT, F, TWO>(s_hi, m1[1], m2[1]);
}

// decode_atom_scaled with the multipliers computed from the scale bytes s_lo, s_hi of rows g and g + 8.
template <typename AT, Format F, bool TWO>
__device__ __forceinline__ void decode_atom(const uint4& c, uint32_t s_lo, uint32_t s_hi, uint32_t (&f)[4][4]) {
  uint32_t m1[2][2][2], m2[2][2][2] = {};
  atom_multipliers<AT, F, TWO>(s_lo, s_hi, m1, m2);
  decode_atom_scaled<AT, TWO>(c, m1, m2, f);
}

// decode_atom for N atoms of a warp's chunk (codes c[i], scale bytes sc[i] of rows g and g + 8): the
// one-multiply path, or the two-multiply path where kAlwaysTwo or where an MXFP4 scale of any lane of the
// warp needs it (a warp vote, so that the warp stays converged).
template <typename AT, Format F, int N>
__device__ __forceinline__ void decode_atoms(const uint4 (&c)[N], const uint32_t (&sc)[N][2], uint32_t (&f)[N][4][4]) {
  bool big = false;
  if constexpr (F == Format::kMxFp4) {
#pragma unroll
    for (int i = 0; i < N; ++i) big |= mx_needs_two(sc[i][0]) || mx_needs_two(sc[i][1]);
  }
  if (kAlwaysTwo<AT, F> || (F == Format::kMxFp4 && __any_sync(0xffffffffu, big))) {
#pragma unroll
    for (int i = 0; i < N; ++i) decode_atom<AT, F, true>(c[i], sc[i][0], sc[i][1], f[i]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) decode_atom<AT, F, false>(c[i], sc[i][0], sc[i][1], f[i]);
  }
}

// The scale bytes of row r of a packed atom whose scales start at `atom` (16 rows x 64/G bytes).
template <Format F>
__device__ __forceinline__ uint32_t atom_row_scales(const unsigned char* atom, int r) {
  if constexpr (F == Format::kMxFp4) return *reinterpret_cast<const uint16_t*>(atom + 2 * r);
  else return *reinterpret_cast<const uint32_t*>(atom + 4 * r);
}

template <typename AT, Format F>
constexpr float kNvUnscale = F == Format::kNvFp4 && kBf16<AT> ? 256.0f : 1.0f;

__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// 1 / the weight's global scale: NVFP4's, or an MXFP4 weight's divisor (FP-Quant abs_max checkpoints, 3.0);
// 1 without one, which leaves every product as it was (multiplying by 1 is exact).
__device__ __forceinline__ float inv_global_scale(const W4A16Params& p) {
  return p.global_scale != nullptr ? 1.0f / __ldg(p.global_scale) : 1.0f;
}

// Epilogue store of the sums (v0, v1) of row m, features n and n + 1, for kernels whose grid.z is the split:
// float32 partials of this split when splits > 1 (reduce_splits applies the global scale and the bias), else
// times inv_g (inv_global_scale), plus the bias, rounded to AT.
template <typename AT, Format F>
__device__ __forceinline__ void store_pair(const W4A16Params& p, int64_t m, int64_t n, float v0, float v1, float inv_g) {
  if (p.splits > 1) {
    *reinterpret_cast<float2*>(p.workspace + (static_cast<int64_t>(blockIdx.z) * p.M + m) * p.N + n) =
        make_float2(v0, v1);
    return;
  }
  v0 *= inv_g;
  v1 *= inv_g;
  if (p.bias) {
    v0 += to_float(static_cast<const AT*>(p.bias)[n]);
    v1 += to_float(static_cast<const AT*>(p.bias)[n + 1]);
  }
  *reinterpret_cast<uint32_t*>(static_cast<AT*>(p.out) + m * p.N + n) = pack2<AT>(v0, v1);
}

// Split-K: partials [splits, M, N] (float32, already free of any kernel-internal scaling) summed in split
// order (deterministic), then the global scale and the bias.
template <typename AT, Format F>
__global__ void __launch_bounds__(256) splitk_reduce_kernel(W4A16Params p) {
  const float inv_g = inv_global_scale(p);
  const int64_t total = p.M * p.N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < p.splits; ++s) v += p.workspace[s * total + i];
    v *= inv_g;
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
