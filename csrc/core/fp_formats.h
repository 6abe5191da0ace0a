// Element and scale encodings shared by every backend.
//
// This header is the single C++ statement of the format arithmetic: the CPU kernels and the CUDA kernels
// include it unchanged (FPQ_HD marks functions for both), so the two cannot drift apart. Every
// function here is exact integer/bit logic or a single IEEE-754 float32 operation whose rounding is fully
// determined; no operation may be contracted into an FMA (see mul_rn/add_rn), because bit-identity between
// CPU and GPU is part of the contract. python/fpquant_ext/formats.py states the same rules in PyTorch.
#pragma once

#include <cstdint>
#include <cstring>
#include <cmath>

#include "types.h"

#if defined(__CUDACC__)
#define FPQ_HD __host__ __device__ __forceinline__
#define FPQ_UNROLL _Pragma("unroll")
#else
#define FPQ_HD inline
#define FPQ_UNROLL
#endif

namespace fpquant::core {

constexpr float kE2M1Max = 6.0f;
constexpr float kE4M3Max = 448.0f;
constexpr uint8_t kE8M0Nan = 0xFF;
constexpr uint8_t kE4M3Nan = 0x7F;
// FP-Quant's Gaussian fit: for a unit-variance Gaussian the MSE-optimal E2M1 grid has its largest level at
// 2.92247856, so the scale is sigma * 2.92247856 / 6. The float32 constant below is that quotient rounded.
constexpr float kQuestFactor = static_cast<float>(2.92247856 / 6.0);
constexpr float kQuestEps = 1e-8f;

FPQ_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

FPQ_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// Single-rounding float32 operations that a compiler may never fuse (nvcc fuses a*b+c by default).
FPQ_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;  // host sources are compiled with -ffp-contract=off
#endif
}
FPQ_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
FPQ_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

FPQ_HD bool is_finite(float f) { return (f32_bits(f) & 0x7F800000u) != 0x7F800000u; }
FPQ_HD bool is_nan(float f) { return (f32_bits(f) & 0x7FFFFFFFu) > 0x7F800000u; }
FPQ_HD float abs_f(float f) { return bits_f32(f32_bits(f) & 0x7FFFFFFFu); }
// NaN-free maximum (callers screen non-finite blocks first).
FPQ_HD float max_f(float a, float b) { return a > b ? a : b; }

// 2^e as float32 for e in [-149, 127]; exact (subnormal below -126).
FPQ_HD float exp2i(int e) {
  return e >= -126 ? bits_f32(static_cast<uint32_t>(e + 127) << 23) : bits_f32(1u << (e + 149));
}

// ---------------------------------------------------------------------------------------------------------
// E2M1 elements: magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}; code = sign << 3 | magnitude index.
// Round to nearest, ties to the even index (the even mantissa bit), saturate at 6. The sign bit is the
// input's sign bit, so -0.0 and negative values that round to zero give code 0x8 (negative zero), as an
// IEEE conversion does. Callers never pass NaN (NaN blocks are handled by the scale rules).
//
// The index is RNE(g(a)) for a = min(|q|, 6), where g(a) = min(2a, a + 2, a/2 + 4) maps the E2M1 grid onto
// the integers 0..7 (slopes 2, 1, 1/2 on [0, 2], [2, 4], [4, 6]; continuous, concave, so the minimum of the
// three lines). Each midpoint between grid values maps to a half-integer, so RNE on g is E2M1 rounding with
// E2M1's tie rule. Each line is rounded to an integer by one IEEE addition of M = 2^23 (ULP 1 there):
// 2a and a/2 are exact, so every t below is a single rounding of the exact value and equals what one fused
// multiply-add gives (the CUDA build uses FMA for speed; the results are the same bits). RNE is monotone, so
// the minimum of the rounded lines is the rounded minimum. formats.e2m1_encode states the same rule as a
// threshold table; tests compare the two on every float near each threshold.
constexpr float kE2M1Magic = 8388608.0f;  // 2^23

// 2^23 + index as a float32 (its bit pattern is 0x4B000000 + index): lets GPU kernels pack codes without
// converting each index separately.
FPQ_HD float e2m1_grid_point(float a) {
  const float s = a < kE2M1Max ? a : kE2M1Max;  // saturate; also +inf
#if defined(__CUDA_ARCH__)
  const float t1 = __fmaf_rn(s, 2.0f, kE2M1Magic);
  const float t2 = __fadd_rn(s, kE2M1Magic + 2.0f);
  const float t3 = __fmaf_rn(s, 0.5f, kE2M1Magic + 4.0f);
  return fminf(t1, fminf(t2, t3));
#else
  const float t1 = s * 2.0f + kE2M1Magic;  // host sources are compiled with -ffp-contract=off
  const float t2 = s + (kE2M1Magic + 2.0f);
  const float t3 = s * 0.5f + (kE2M1Magic + 4.0f);
  const float m = t2 < t3 ? t2 : t3;
  return t1 < m ? t1 : m;
#endif
}

FPQ_HD uint8_t e2m1_encode(float q) {
  const uint32_t sign = (f32_bits(q) >> 28) & 0x8u;
  const float a = abs_f(q);
  return static_cast<uint8_t>(sign | (f32_bits(e2m1_grid_point(a)) - f32_bits(kE2M1Magic)));
}

FPQ_HD float e2m1_decode(uint8_t code) {
  // Magnitudes times 2 are small integers: {0,1,2,3,4,6,8,12}.
  const uint32_t m = code & 0x7u;
  const float twice = static_cast<float>(m < 4 ? m : (m == 7 ? 12u : 4u + 2u * (m - 4u)));
  const float v = twice * 0.5f;
  return (code & 0x8u) ? -v : v;
}

// ---------------------------------------------------------------------------------------------------------
// E8M0 scales: code = e + 127 encodes 2^e for e in [-127, 127]; 0xFF is NaN.
FPQ_HD float e8m0_decode(uint8_t code) {
  return code == kE8M0Nan ? bits_f32(0x7FC00000u) : exp2i(static_cast<int>(code) - 127);
}

// ---------------------------------------------------------------------------------------------------------
// E4M3 (fn variant: no infinities, 0x7F NaN, max 448, subnormals 2^-9 * m). Encode non-negative s:
// round to nearest even, saturating: s >= 448 (and +inf) -> 448; NaN -> NaN code.
FPQ_HD uint8_t e4m3_encode_sat(float s) {
  if (is_nan(s)) return kE4M3Nan;
  if (!(s < kE4M3Max)) return 0x7E;
  if (s < 0.015625f) {  // below 2^-6: subnormal quantum 2^-9; rint(s*512) in [0, 8], 8 is the first normal
    return static_cast<uint8_t>(rintf(mul_rn(s, 512.0f)));
  }
  const int e = static_cast<int>((f32_bits(s) >> 23) & 0xFF) - 127;  // floor(log2 s) in [-6, 8]
  int q = static_cast<int>(rintf(mul_rn(s, exp2i(3 - e))));        // in [8, 16], exact scaling
  int eb = e + 7;
  if (q == 16) { q = 8; eb += 1; }
  return static_cast<uint8_t>((eb << 3) | (q - 8));
}

FPQ_HD float e4m3_decode(uint8_t code) {
  if ((code & 0x7Fu) == 0x7Fu) return bits_f32(0x7FC00000u);
  const int e = (code >> 3) & 0xF;
  const int m = code & 0x7;
  const float mag = e == 0 ? mul_rn(static_cast<float>(m), 0.001953125f)
                           : mul_rn(static_cast<float>(8 + m), exp2i(e - 10));
  return (code & 0x80u) ? -mag : mag;
}

}  // namespace fpquant::core
